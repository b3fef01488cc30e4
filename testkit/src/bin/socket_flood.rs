//! `p2pvps-socket-flood SOCKET CONNECTIONS REQUESTS PASSPHRASES`: what a hostile renter does to the
//! governor's socket, run as root inside a renter container by the sandbox test. It holds
//! CONNECTIONS connections open at once, then sends REQUESTS requests over a few connections, then
//! PASSPHRASES wrong passphrases, and prints one line of figures: `held=N refused=N answered=N
//! requests_per_second=N passphrase_answers=N`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, connections, requests, passphrases] = args.as_slice() else {
        eprintln!("usage: p2pvps-socket-flood SOCKET CONNECTIONS REQUESTS PASSPHRASES");
        std::process::exit(2);
    };
    let number = |s: &str| s.parse::<usize>().expect("a count");
    let (held, refused) = hold(socket, number(connections));
    let (answered, rate) = requests_over(socket, number(requests));
    let passphrase_answers = wrong_passphrases(socket, number(passphrases));
    println!(
        "held={held} refused={refused} answered={answered} requests_per_second={rate:.0} passphrase_answers={passphrase_answers}"
    );
}

/// Opens `n` connections and keeps them for two seconds; how many stayed open and how many the
/// governor turned away (an answer line, then end of stream).
fn hold(socket: &str, n: usize) -> (usize, usize) {
    let mut open = Vec::new();
    for _ in 0..n {
        match UnixStream::connect(socket) {
            Ok(s) => open.push(s),
            Err(e) => eprintln!("connect: {e}"),
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut refused = 0;
    for s in &open {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut line = String::new();
        if BufReader::new(s).read_line(&mut line).is_ok() && line.contains("too many connections") {
            refused += 1;
        }
    }
    (open.len() - refused, refused)
}

/// `n` lease requests, pipelined over four connections; answers and the rate.
fn requests_over(socket: &str, n: usize) -> (usize, f64) {
    let started = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let socket = socket.to_owned();
            let count = n / 4 + usize::from(i < n % 4);
            std::thread::spawn(move || {
                let Ok(mut s) = UnixStream::connect(&socket) else {
                    return 0;
                };
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut answered = 0;
                for _ in 0..count {
                    if s.write_all(b"{\"op\":\"lease\"}\n").is_err() {
                        break;
                    }
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let answered: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    #[allow(clippy::cast_precision_loss)] // a figure to print
    let rate = answered as f64 / started.elapsed().as_secs_f64();
    (answered, rate)
}

/// `n` unlocks with a wrong passphrase, one connection each; how many got an answer.
fn wrong_passphrases(socket: &str, n: usize) -> usize {
    (0..n)
        .filter(|i| {
            let Ok(mut s) = UnixStream::connect(socket) else {
                return false;
            };
            let request =
                format!("{{\"op\":\"storage-unlock\",\"passphrase\":\"wrong-guess-{i}\"}}\n");
            let mut line = String::new();
            s.write_all(request.as_bytes()).is_ok()
                && BufReader::new(&s).read_line(&mut line).unwrap_or(0) > 0
        })
        .count()
}
