// p2pvps spa-dev: a development server for single-page apps, with Node's standard library only.
//   - serves the files under --root;
//   - answers paths without a file extension that match no file with index.html (client-side routes);
//   - reloads open pages when a file changes (a script added to HTML pages listens on /__reload).
// Usage: node dev-server.js --root DIR [--host 127.0.0.1] [--port 3000]
'use strict';

const http = require('http');
const fs = require('fs');
const path = require('path');

function options(argv) {
  const o = { root: null, host: '127.0.0.1', port: 3000 };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${key} needs a value`);
    if (key === '--root') o.root = path.resolve(value);
    else if (key === '--host') o.host = value;
    else if (key === '--port') o.port = Number(value);
    else throw new Error(`unknown option ${key}`);
  }
  if (!o.root) throw new Error('--root DIR is required');
  if (!Number.isInteger(o.port) || o.port < 1 || o.port > 65535) throw new Error('bad --port');
  return o;
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};
const RELOAD_SCRIPT =
  '<script>new EventSource("/__reload").onmessage = () => location.reload();</script>';

// The newest modification time under dir (node_modules skipped): polled, so it works on any
// filesystem and Node version.
function newestChange(dir) {
  let newest = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (entry.name === 'node_modules') continue;
    const full = path.join(dir, entry.name);
    const stat = fs.statSync(full);
    newest = Math.max(newest, stat.mtimeMs);
    if (entry.isDirectory()) newest = Math.max(newest, newestChange(full));
  }
  return newest;
}

function resolveFile(root, urlPath) {
  const wanted = path.normalize(path.join(root, decodeURIComponent(urlPath)));
  if (wanted !== root && !wanted.startsWith(root + path.sep)) return null; // outside the root
  try {
    const stat = fs.statSync(wanted);
    if (stat.isFile()) return wanted;
    if (stat.isDirectory() && fs.existsSync(path.join(wanted, 'index.html'))) {
      return path.join(wanted, 'index.html');
    }
  } catch (e) {
    // not there: maybe a client-side route
  }
  if (path.extname(wanted) === '') return path.join(root, 'index.html');
  return null;
}

function main() {
  const o = options(process.argv.slice(2));
  const listeners = new Set();

  let last = newestChange(o.root);
  setInterval(() => {
    const now = newestChange(o.root);
    if (now !== last) {
      last = now;
      for (const res of listeners) res.write('data: reload\n\n');
    }
  }, 500).unref();

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname === '/__reload') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      res.write(': connected\n\n');
      listeners.add(res);
      req.on('close', () => listeners.delete(res));
      return;
    }
    let file = null;
    try {
      file = resolveFile(o.root, url.pathname);
    } catch (e) {
      file = null; // a malformed %-escape
    }
    if (!file || !fs.existsSync(file)) {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' });
      res.end('not found\n');
      return;
    }
    const type = TYPES[path.extname(file)] || 'application/octet-stream';
    let body = fs.readFileSync(file);
    if (type.startsWith('text/html')) {
      body = Buffer.from(body.toString('utf8').replace('</body>', `${RELOAD_SCRIPT}</body>`));
    }
    res.writeHead(200, { 'Content-Type': type, 'Cache-Control': 'no-store' });
    res.end(body);
  });
  server.listen(o.port, o.host, () => {
    console.log(`spa-dev: serving ${o.root} on http://${o.host}:${o.port}/`);
  });
}

main();
