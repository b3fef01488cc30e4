//! `p2pvps-mirror-proxy LISTEN HOST`: a forward HTTP proxy to one host (Debian's mirror) and nothing
//! else, for the image test: its guest runs with QEMU's `restrict=on` (nothing leaves it but the
//! ports the test forwards), and apt in the renter's container reaches the mirror through this.
//!
//! A client's first request must be `GET`/`HEAD http://HOST/…`; the connection is then spliced to
//! HOST:80 as it is (HTTP/1.1 servers accept the absolute form, and apt keeps to one host per
//! connection). Anything else gets 403 and the connection closes. Prints `listening on ADDR`.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::Duration;

/// A request head larger than this is refused.
const MAX_HEAD: usize = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, host] = args.as_slice() else {
        eprintln!("usage: p2pvps-mirror-proxy LISTEN HOST   (e.g. 127.0.0.1:0 deb.debian.org)");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("p2pvps-mirror-proxy: bind {listen}: {e}");
        std::process::exit(1);
    });
    println!("listening on {}", listener.local_addr().expect("bound"));
    for client in listener.incoming().flatten() {
        let host = host.clone();
        std::thread::spawn(move || {
            if let Err(e) = serve(client, &host) {
                eprintln!("p2pvps-mirror-proxy: {e}");
            }
        });
    }
}

fn serve(client: TcpStream, host: &str) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 || head.len() + line.len() > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&line);
    }
    let request = String::from_utf8_lossy(&head);
    let first = request.lines().next().unwrap_or_default();
    if !allowed(first, host) {
        eprintln!("p2pvps-mirror-proxy: refused {first:?}");
        let mut client = client;
        client.write_all(
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let mut upstream = TcpStream::connect((host, 80))?;
    upstream.write_all(&head)?;
    // What the client sent after the head (pipelined requests) is still in the reader's buffer.
    upstream.write_all(reader.buffer())?;
    client.set_read_timeout(None)?;
    let mut to_client = client.try_clone()?;
    let mut from_upstream = upstream.try_clone()?;
    let down = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_upstream, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Write);
    });
    let mut from_client = client;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => upstream.write_all(&buf[..n])?,
        }
    }
    let _ = upstream.shutdown(Shutdown::Write);
    let _ = down.join();
    Ok(())
}

/// `GET http://HOST/…` or `HEAD http://HOST/…` (port 80 only).
fn allowed(request_line: &str, host: &str) -> bool {
    let mut words = request_line.split_whitespace();
    let (Some(method), Some(target)) = (words.next(), words.next()) else {
        return false;
    };
    let Some(rest) = target.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    matches!(method, "GET" | "HEAD")
        && (authority.eq_ignore_ascii_case(host)
            || authority.eq_ignore_ascii_case(&format!("{host}:80")))
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn only_reads_of_the_one_host_pass() {
        let host = "deb.debian.org";
        assert!(allowed(
            "GET http://deb.debian.org/debian/dists/bookworm/InRelease HTTP/1.1",
            host
        ));
        assert!(allowed("HEAD http://deb.debian.org:80/x HTTP/1.1", host));
        assert!(!allowed("GET http://deb.debian.org:8080/x HTTP/1.1", host));
        assert!(!allowed("GET http://deb.debian.org.evil/x HTTP/1.1", host));
        assert!(!allowed("GET http://10.0.2.100/ HTTP/1.1", host));
        assert!(!allowed("CONNECT deb.debian.org:443 HTTP/1.1", host));
        assert!(!allowed("POST http://deb.debian.org/x HTTP/1.1", host));
        assert!(!allowed("GET /relative HTTP/1.1", host));
        assert!(!allowed("", host));
    }
}
