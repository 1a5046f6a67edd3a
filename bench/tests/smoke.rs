//! A smoke run of the load tool at tiny N, so that `cargo test` notices when a scenario stops
//! working (a moved path, a changed endpoint): `peers` (idle, fan-out and targeted logouts,
//! sessiond only: the peers need bench/peers/setup.sh) and `everyone`, against the real server
//! started by the tool itself. The figures are not checked (BENCHMARKS.md has the real runs).

use std::process::Command;

fn bench(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond-bench")).args(args).output().expect("run sessiond-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sessiond-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn peers_and_everyone_run_at_tiny_n() {
    let charts = std::env::temp_dir().join(format!("sessiond-bench-smoke-{}", std::process::id()));
    let peers = bench(&[
        "peers",
        "--peers",
        "sessiond",
        "--sizes",
        "20",
        "--targeted",
        "50",
        "--per-user",
        "5",
        "--rounds",
        "1",
        "--charts",
        charts.to_str().unwrap(),
    ]);
    // Every socket got its frame, in the fan-out and in the targeted logouts.
    assert!(peers.lines().any(|l| l.contains("| sessiond | fan-out 20 |") && l.contains("20 of 20")), "{peers}");
    assert!(peers.lines().any(|l| l.contains("| sessiond | targeted 50") && l.contains("50 of 50")), "{peers}");
    assert!(charts.join("peers-broadcast-20.svg").exists() && charts.join("peers-targeted-50.svg").exists());
    let _ = std::fs::remove_dir_all(&charts);

    let everyone = bench(&["everyone", "--sizes", "20"]);
    assert!(everyone.contains("| 20 (20 got it) |"), "{everyone}");
}

/// The soak's short run (issue 21; BENCHMARKS.md has the long one): 100 sockets under churn
/// and the request mix for 20 s; every socket step and request answered as expected, and the
/// hub registry and open sockets back to zero once the sockets are closed.
#[test]
fn soak_runs_short_and_ends_with_an_empty_registry() {
    let soak = bench(&["soak", "--sizes", "100", "--seconds", "20"]);
    let closed = soak.lines().find(|l| l.starts_with("| closed |")).unwrap_or_else(|| panic!("{soak}"));
    let cells: Vec<&str> = closed.split('|').map(str::trim).collect();
    // | closed | at | rss | files | cpu | registry | open | …
    assert_eq!((cells[6], cells[7]), ("0", "0"), "registry and sockets after closing: {closed}");
    let logouts: u64 = cells[11].parse().unwrap();
    assert!(logouts > 0, "the churn logged sessions out: {closed}");
    assert!(soak.contains("failures (a request or socket step not answered as expected) 0"), "{soak}");
}
