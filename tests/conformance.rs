//! The contract from the outside: `tests/conformance/contract.py` drives the `sessiond` binary
//! built for this run with third-party clients (joserfc verifies the access token against the
//! JWKS, the `websockets` package opens the sockets, `requests` does HTTP): the basics wired as
//! docs/API.md reads, seen by code that shares nothing with sessiond.
//!
//! Needs `python3` with `websockets`, `joserfc` and `requests` (`pip install websockets joserfc
//! requests`); without them the test says so in `cargo test`'s output and passes, unless
//! `SESSIOND_REQUIRE_CONFORMANCE=1` (set by `.ci/run`, which installs them), where it fails.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "support/skip.rs"]
mod skip;

fn python_has_the_clients() -> bool {
    Command::new("python3")
        .args(["-c", "import websockets, joserfc, requests"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn third_party_clients_see_the_contract() {
    if !python_has_the_clients() {
        if std::env::var("SESSIOND_REQUIRE_CONFORMANCE").as_deref() == Ok("1") {
            panic!("SESSIOND_REQUIRE_CONFORMANCE=1 but python3 with websockets, joserfc and requests is missing");
        }
        skip::report("contract conformance did NOT run: pip install websockets joserfc requests");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("http://127.0.0.1:{port}");
    let log = dir.path().join("server.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .env("SESSIOND_LISTEN", format!("127.0.0.1:{port}"))
        .env("SESSIOND_ISSUER", &base)
        .env("DATABASE_URL", format!("sqlite://{}", dir.path().join("sessiond.db").display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("the sessiond binary starts");
    let ready = Instant::now() + Duration::from_secs(30);
    while !answers_200(&format!("{base}/readyz")) {
        assert!(Instant::now() < ready, "the server did not get ready:\n{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/contract.py");
    let out = Command::new("python3").arg(script).arg(&base).output().expect("python3 runs");
    let _ = server.kill();
    let _ = server.wait();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "contract checks failed:\n{report}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(report.contains(" passed, 0 failed"), "{report}");
}

/// Whether a blocking `GET` of `url` answers 200 (the test thread has no async runtime).
fn answers_200(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut s) = std::net::TcpStream::connect(host) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}
