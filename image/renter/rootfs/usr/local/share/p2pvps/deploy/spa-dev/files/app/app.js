// The sample app: two views and client-side routing with the History API. Edit this file: the page
// reloads by itself.
const views = {
  '/': '<h1>Hello from your P2P VPS single-page app</h1><p>Edit /media/storage/spa-dev/app/app.js.</p>',
  '/about': '<h1>About</h1><p>Served by the spa-dev dev server (Node.js from Debian).</p>',
};

function render() {
  document.getElementById('view').innerHTML = views[location.pathname] || '<h1>Not found</h1>';
}

document.addEventListener('click', (event) => {
  const link = event.target.closest('a[data-link]');
  if (!link) return;
  event.preventDefault();
  history.pushState(null, '', link.getAttribute('href'));
  render();
});
window.addEventListener('popstate', render);
render();
