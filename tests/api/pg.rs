//! PostgreSQL for the tests: `TEST_DATABASE_URL` if set, else the local default
//! `postgres://postgres@127.0.0.1:5432/test` if reachable, else a throwaway cluster started with
//! local `initdb`/`pg_ctl` (as a non-root user when the tests run as root). Each test gets its
//! own database, dropped when the test ends. With none available every PostgreSQL test ends at
//! once and prints "SKIPPED … no PostgreSQL" in `cargo test`'s own output (not captured); with
//! `SESSIOND_REQUIRE_POSTGRES=1` each fails instead.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};
use tokio::sync::OnceCell;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

static ADMIN_URL: OnceCell<Option<String>> = OnceCell::const_new();

async fn reachable(url: &str) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(url)).await, Ok(Ok(_)))
}

/// The URL of a PostgreSQL where the tests may create databases, if any.
pub async fn admin_url() -> Option<String> {
    ADMIN_URL
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("TEST_DATABASE_URL") {
                if reachable(&url).await {
                    return Some(url);
                }
                eprintln!("TEST_DATABASE_URL is set but not reachable");
                return None;
            }
            if reachable(DEFAULT_URL).await {
                return Some(DEFAULT_URL.to_string());
            }
            let url = tokio::task::spawn_blocking(throwaway_cluster).await.ok().flatten()?;
            reachable(&url).await.then_some(url)
        })
        .await
        .clone()
}

/// No PostgreSQL: fail under `SESSIOND_REQUIRE_POSTGRES=1` (CI); otherwise report the skip where
/// `cargo test` shows it (a direct write to stderr: libtest captures only `print!`/`eprint!`),
/// once per test, so a run without PostgreSQL can never look like a passing PostgreSQL suite.
fn no_postgres() {
    if std::env::var("SESSIOND_REQUIRE_POSTGRES").as_deref() == Ok("1") {
        panic!("SESSIOND_REQUIRE_POSTGRES=1 but no PostgreSQL is reachable (TEST_DATABASE_URL, {DEFAULT_URL}, initdb)");
    }
    crate::skip::report_test(
        "no PostgreSQL: the PostgreSQL tests did NOT run (set TEST_DATABASE_URL, start one on 127.0.0.1:5432, or install initdb/pg_ctl)",
    );
}

/// A database created for one test (and shared by the instances of a multi-instance test).
pub struct TestDatabase {
    pub url: String,
    name: String,
    admin: String,
}

impl TestDatabase {
    /// A fresh database, or `None` (reported as a skip) when no PostgreSQL can be had.
    pub async fn create() -> Option<Self> {
        let Some(admin) = admin_url().await else {
            no_postgres();
            return None;
        };
        let name = format!("sessiond_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin).await.expect("connect to the admin database");
        conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create the test database");
        conn.close().await.ok();
        Some(TestDatabase { url: with_database(&admin, &name), name, admin })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs outside any runtime guarantee: use a small one on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.ok()?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await.ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..].find('/').map(|i| scheme_end + i).unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        out = format!("{out}?{q}");
    }
    out
}

fn find_bin(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        dirs.extend(entries.flatten().map(|e| e.path().join("bin")));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Starts a private cluster on a free port; returns its URL. A watchdog stops and removes it
/// when the test process exits.
fn throwaway_cluster() -> Option<String> {
    let (initdb, pg_ctl) = (find_bin("initdb")?, find_bin("pg_ctl")?);
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let dir = std::env::temp_dir().join(format!("sessiond-test-pg-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let root = Command::new("id").arg("-u").output().ok().is_some_and(|o| o.stdout.starts_with(b"0\n"));
    // PostgreSQL refuses to run as root: use the `postgres` system user, else `nobody`.
    let user = if root {
        let u = if Command::new("id").arg("postgres").output().ok()?.status.success() { "postgres" } else { "nobody" };
        Command::new("chown").args(["-R", u]).arg(&dir).status().ok()?;
        Some(u)
    } else {
        None
    };
    let run = |bin: &PathBuf, args: Vec<String>| -> bool {
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.args(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    };
    let data = dir.join("data").display().to_string();
    if !run(&initdb, vec!["-D".into(), data.clone(), "-U".into(), "postgres".into(), "--auth=trust".into()]) {
        return None;
    }
    let opts = format!("-p {port} -c listen_addresses=127.0.0.1 -k {}", dir.display());
    let log = dir.join("log").display().to_string();
    if !run(&pg_ctl, vec!["-D".into(), data, "-o".into(), opts, "-l".into(), log, "-w".into(), "start".into()]) {
        return None;
    }
    // Stop and remove it once this test process is gone.
    let stop = format!(
        "{} {} -D {} -m fast stop",
        user.map(|u| format!("runuser -u {u} --")).unwrap_or_default(),
        pg_ctl.display(),
        dir.join("data").display()
    );
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("sh")
        .args(["-c", &watchdog])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    eprintln!("started a throwaway PostgreSQL on port {port} in {}", dir.display());
    Some(format!("postgres://postgres@127.0.0.1:{port}/postgres"))
}

#[test]
fn database_name_is_replaced() {
    assert_eq!(with_database("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
    assert_eq!(with_database("postgres://u@h/test?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
}
