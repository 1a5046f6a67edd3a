//! The browser suite: `tests/browser/run.mjs` drives the demo app and the admin console in
//! headless Debian Chromium with Playwright (`playwright-core`), against the server binary
//! built for this test run. Screenshots of each scenario's final state land in
//! `target/browser-artifacts/`.
//!
//! Needs `/usr/bin/chromium`, `node`, and `npm ci` in `tests/browser`; without them the test
//! says loudly that the browser tests were skipped, unless `SESSIOND_REQUIRE_BROWSER=1` (set by
//! `.ci/run`), where it fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "support/skip.rs"]
mod skip;

#[test]
fn browser_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = Path::new("/usr/bin/chromium").exists();
    let playwright = root.join("tests/browser/node_modules/playwright-core").exists();
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !(chromium && playwright && node) {
        let why = format!("chromium: {chromium}, node: {node}, playwright-core installed: {playwright}");
        if std::env::var("SESSIOND_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("SESSIOND_REQUIRE_BROWSER=1 but the browser tests cannot run ({why})");
        }
        skip::report(&format!(
            "browser tests did NOT run ({why}): apt-get install chromium; cd tests/browser && npm ci"
        ));
        return;
    }
    let mut child = Command::new("node")
        .arg("tests/browser/run.mjs")
        .current_dir(root)
        .env("SESSIOND_BIN", env!("CARGO_BIN_EXE_sessiond"))
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser suite did not finish in 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "browser scenarios failed (see the output above and target/browser-artifacts/)");
}
