//! Skips that `cargo test` shows. libtest captures what a test prints with `print!`/`eprint!`
//! and shows it only when the test fails, so a suite that could not run would look exactly like
//! one that passed. A skip is written straight to the process's stderr instead, which libtest
//! does not capture: it appears in the normal output of `cargo test`, between the `test … ok`
//! lines.

use std::io::Write;
use std::sync::Once;

/// Reports a skipped suite, visibly, with a banner.
pub fn report(what: &str) {
    let line = "!".repeat(78);
    let _ = writeln!(std::io::stderr().lock(), "\n{line}\n!!! SKIPPED: {what}\n{line}");
}

/// Reports one skipped test; the first skip of the process also prints the banner for `why`.
pub fn report_test(why: &str) {
    static BANNER: Once = Once::new();
    BANNER.call_once(|| report(why));
    let test = std::thread::current().name().unwrap_or("?").to_string();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}");
}
