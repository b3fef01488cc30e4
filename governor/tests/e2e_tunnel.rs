//! A renter reaches the container through the reverse tunnel, end to end: the governor binary, the
//! devserver, the real Docker engine with the renter image (connector, sshd), and Debian's OpenSSH
//! server as the tunnel endpoint. The container sits on a Docker network the test makes; the
//! endpoint listens on that network's gateway and on 127.0.0.1, where the renter's `ssh` goes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::tunnel::{Rig, login_works, ssh, stdout};
use common::{admin_device, docker, status, wait_for};
use p2pvps_testkit::TUNNEL_USER;

/// The command lines of Docker's port publishers (docker-proxy), which carry the container's IP.
fn port_publishers() -> String {
    let out = Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .expect("ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("docker-proxy"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renter_logs_in_with_sudo_and_a_re_rent_changes_the_login() {
    let rig = Rig::start(None).await;
    let (user, password, port) = rig.serving(1, Duration::from_secs(90)).await;

    login_works(port, &user, &password, Duration::from_secs(30)).await;
    // Nothing of the container is published on the host's addresses: no port bindings, no
    // docker-proxy for its address; the renter came in through the endpoint's forward.
    let (_, ip, _) = docker(&[
        "inspect",
        "--format",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &rig.name,
    ]);
    assert_ne!(ip, "", "the renter container has no address");
    let (_, ports, _) = docker(&[
        "inspect",
        "--format",
        "{{json .NetworkSettings.Ports}}",
        &rig.name,
    ]);
    assert!(ports == "{}" || ports == "null", "published: {ports}");
    let publishers = port_publishers();
    assert!(
        !publishers.contains(&format!("-container-ip {ip} ")),
        "{publishers}"
    );
    assert!(
        rig.endpoint
            .log()
            .contains(&format!("Accepted password for {TUNNEL_USER}"))
    );

    // sudo needs the password; root cannot log in; the storage is the renter's.
    let o = ssh(port, &user, &password, "sudo -n true");
    assert!(!o.status.success(), "sudo without a password worked");
    let o = ssh(
        port,
        &user,
        &password,
        &format!("echo '{password}' | sudo -S -p '' id -u"),
    );
    assert_eq!(stdout(&o), "0", "sudo with the password: {o:?}");
    let o = ssh(port, "root", &password, "true");
    assert!(!o.status.success(), "root logged in");
    let o = ssh(
        port,
        &user,
        &password,
        "echo kept > /media/storage/f && cat /media/storage/f",
    );
    assert_eq!(stdout(&o), "kept");

    // An open session is seen by the connector and reported (the LED shows "renter connected").
    let mut session = common::tunnel::ssh_command(port, &user, &password, "sleep 8")
        .spawn()
        .expect("start a session");
    wait_for(
        "the session to be reported",
        Duration::from_secs(20),
        async || (status(&rig.state)["tunnel"]["sessions"] == 1).then_some(()),
    )
    .await;
    session.wait().unwrap();
    wait_for(
        "the session's end to be reported",
        Duration::from_secs(20),
        async || (status(&rig.state)["tunnel"]["sessions"] == 0).then_some(()),
    )
    .await;

    // The marketplace ends the rental: the next renter's login works, the old one does not.
    rig.expire().await;
    let (next_user, next_password, next_port) = rig.serving(2, Duration::from_secs(90)).await;
    assert_ne!(next_user, user);
    let took = login_works(
        next_port,
        &next_user,
        &next_password,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("new renter logged in {took:?} after the tunnel reported up");
    let o = ssh(next_port, &user, &password, "true");
    assert!(
        !o.status.success(),
        "the previous renter's login still works"
    );
    let o = ssh(
        next_port,
        &next_user,
        &next_password,
        "ls -A /media/storage",
    );
    assert_eq!(stdout(&o), "", "the new renter sees the old files");
}

/// Everything is made before the device is listed: the login works through the tunnel seconds
/// after the registration, for the first renter and for the next one (the benchmark gives figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_works_within_seconds_of_the_registration() {
    const LIMIT: Duration = Duration::from_secs(10);
    let rig = Rig::start(None).await;
    for registration in 1..=2u64 {
        if registration == 2 {
            rig.expire().await;
        }
        let lease = wait_for("the registration", Duration::from_secs(90), async || {
            let d = admin_device(&rig.base(), &rig.device).await;
            (d["registrations"] == registration).then(|| d["lease"].clone())
        })
        .await;
        let registered = std::time::Instant::now();
        let port = u16::try_from(lease["port"].as_u64().unwrap()).unwrap();
        let (user, password) = (
            lease["username"].as_str().unwrap(),
            lease["password"].as_str().unwrap(),
        );
        login_works(port, user, password, LIMIT).await;
        eprintln!(
            "registration {registration}: the login worked {:?} after it",
            registered.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_heals_after_an_endpoint_restart_and_a_stale_port() {
    let mut rig = Rig::start(None).await;
    let (user, password, port) = rig.serving(1, Duration::from_secs(90)).await;
    login_works(port, &user, &password, Duration::from_secs(30)).await;

    // The endpoint restarts (all its sessions die with it).
    rig.endpoint.restart();
    let took = login_works(port, &user, &password, Duration::from_secs(90)).await;
    eprintln!("tunnel back {took:?} after the endpoint restarted");

    // The endpoint goes down and, while it is down, something else holds the forwarded port: the
    // forward is refused until the stale listener goes away.
    rig.endpoint.kill();
    // The killed sessions' sockets close a moment after the kill.
    let stale = wait_for(
        "the forward's port to be free",
        Duration::from_secs(10),
        async || std::net::TcpListener::bind(("127.0.0.1", port)).ok(),
    )
    .await;
    rig.endpoint.restart();
    wait_for(
        "the refused forward to be reported",
        Duration::from_mins(1),
        async || {
            let t = status(&rig.state)["tunnel"].clone();
            (t["state"] == "down" && t["error"].as_str().is_some_and(|e| e.contains("refused")))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(stale);
    let took = login_works(port, &user, &password, Duration::from_secs(90)).await;
    eprintln!("tunnel back {took:?} after the stale listener went away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pinned_host_key_never_connects() {
    let wrong = format!("SHA256:{}", "A".repeat(43));
    let rig = Rig::start(Some(&wrong)).await;
    let t = wait_for(
        "the tunnel to report the key",
        Duration::from_secs(90),
        async || {
            let t = status(&rig.state)["tunnel"].clone();
            (t["state"] == "down").then_some(t)
        },
    )
    .await;
    let error = t["error"].as_str().unwrap();
    assert!(
        error.contains(&wrong) && error.contains(&rig.endpoint.fingerprint),
        "{error}"
    );
    // The tunnel runs on the host; the container's output is not kept at all (it is the
    // renter's: under the engine's root it would outlive the rental on the state partition).
    assert_eq!(log_driver(&rig.name), "none");
    let lease = admin_device(&rig.base(), &rig.device).await["lease"].clone();
    let port = u16::try_from(lease["port"].as_u64().unwrap()).unwrap();
    let o = ssh(
        port,
        lease["username"].as_str().unwrap(),
        lease["password"].as_str().unwrap(),
        "true",
    );
    assert!(
        !o.status.success(),
        "a login got through an unpinned endpoint"
    );
    assert!(
        !rig.endpoint.log().contains("Accepted password"),
        "the device logged in anyway"
    );
}

fn log_driver(name: &str) -> String {
    let (ok, out, err) = docker(&[
        "inspect",
        "--format",
        "{{.HostConfig.LogConfig.Type}}",
        name,
    ]);
    assert!(ok, "{err}");
    out
}

/// The renter hears of the end: the login banner names it, `p2pvps-lease` prints it, and each
/// reminder (here 40 s and 20 s before a 60 s lease's end) reaches an open session through wall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_renter_is_told_before_the_rental_ends() {
    use std::io::Write as _;
    let rig = Rig::start_with(None, Duration::from_mins(1), &["--expiry-notices", "40,20"]).await;
    let (user, password, port) = rig.serving(1, Duration::from_secs(30)).await;
    let o = ssh(port, &user, &password, "p2pvps-lease");
    assert!(o.status.success(), "{o:?}");
    let lease = stdout(&o);
    assert!(
        lease.contains("This rental ends") && lease.contains("UTC (in"),
        "{lease}"
    );
    let o = ssh(port, &user, &password, "p2pvps-lease --contact");
    assert_eq!(stdout(&o), format!("{} {port}", rig.network.gateway));

    // An interactive login (the banner is shown to those), on a terminal (wall writes to the
    // logged-in terminals), open until after both reminders.
    let mut login = Command::new("sshpass");
    login
        .args(["-p", &password, "ssh", "-tt", "-p", &port.to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "PubkeyAuthentication=no", "-o", "LogLevel=ERROR"])
        .arg(format!("{user}@127.0.0.1"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = login.spawn().expect("ssh runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"sleep 40; exit\n")
        .unwrap();
    let o = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let banner = text
        .lines()
        .take_while(|l| !l.contains("Broadcast"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        banner.contains("This rental ends"),
        "no login banner naming the end: {text}"
    );
    let reminders: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("P2P VPS: This rental ends"))
        .collect();
    assert_eq!(reminders.len(), 2, "one wall per reminder: {text}");
    assert!(
        reminders[0].contains("(in 4") || reminders[0].contains("(in 3"),
        "{text}"
    );
    assert!(
        reminders[1].contains("(in 2") || reminders[1].contains("(in 1"),
        "{text}"
    );
}

/// `sshKey: "generate"`: the device makes its own key on its first start, `status` shows the
/// public half, and once the operator authorizes it the tunnel logs in with it (no password in the
/// config at all); the private key is nowhere in the renter's container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_key_made_on_the_first_start_logs_the_tunnel_in() {
    let rig = Rig::start_with_login(
        None,
        Duration::from_hours(1),
        &[],
        r#""sshKey": "generate""#,
    )
    .await;
    let public = wait_for(
        "the key's public half in status",
        Duration::from_secs(30),
        async || status(&rig.state)["tunnelKey"].as_str().map(str::to_owned),
    )
    .await;
    assert!(
        public.starts_with("ssh-ed25519 ") && public.ends_with(&format!("p2pvps-{}", rig.device)),
        "{public}"
    );
    let key = rig.state.join("keys/tunnel_ed25519");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // The operator authorizes it, as `permitlisten` would for its port in production.
    std::fs::write(rig.endpoint.path("authorized_keys"), format!("{public}\n")).unwrap();
    let (user, password, port) = rig.serving(1, Duration::from_secs(90)).await;
    login_works(port, &user, &password, Duration::from_secs(30)).await;
    assert!(
        rig.endpoint
            .log()
            .contains(&format!("Accepted publickey for {TUNNEL_USER}")),
        "{}",
        rig.endpoint.log()
    );
    let private = std::fs::read_to_string(&key).unwrap();
    let body: String = private.lines().nth(2).unwrap().to_owned();
    assert_eq!(log_driver(&rig.name), "none");
    // The key's own bytes, given on stdin (`-f -`): on grep's command line it would find itself.
    let mut grep = Command::new("docker")
        .args(["exec", "-i", &rig.name, "grep", "-rlsF", "-f", "-"])
        .args([
            "--exclude-dir=proc",
            "--exclude-dir=sys",
            "--exclude-dir=dev",
            "/",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut grep.stdin.take().unwrap(),
        format!("{body}\n").as_bytes(),
    )
    .unwrap();
    let o = grep.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "",
        "the device key in the container"
    );
}
