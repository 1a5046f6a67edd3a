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
