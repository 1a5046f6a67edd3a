//! Test harness: a real server on 127.0.0.1:0 over a real database, driven over HTTP.
//!
//! The same tests run on both backends: the `api` test binary uses a temp SQLite file per test,
//! the `postgres` binary (which includes these modules) a fresh PostgreSQL database per test
//! (see [`crate::pg`]). `crate::BACKEND` says which. Tracing stays silent unless `TEST_LOG` is set.

use std::path::PathBuf;
use std::sync::{Arc, Once};

use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sessiond::app;
use sessiond::clock::Clock;
use sessiond::config::Config;
use sessiond::state::AppState;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const PASSWORD: &str = "correct horse battery staple";

static LOG: Once = Once::new();

fn init_log() {
    LOG.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            sessiond::telemetry::init();
        }
    });
}

/// A running server and a client for it.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Clock,
    pub state: AppState,
    pub config: Config,
    pub dir: Arc<TempDir>,
    /// Keeps a per-test PostgreSQL database alive while any instance uses it.
    pub db: Option<Arc<crate::pg::TestDatabase>>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

/// Which database the tests of this binary run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The configuration every test starts from: defaults and a temp SQLite file.
pub fn test_config(dir: &TempDir) -> Config {
    let mut c = Config::defaults();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.database_url = format!("sqlite://{}", dir.path().join("sessiond.db").display());
    c.issuer = "http://localhost:8080".into();
    c.audience = "sessiond".into();
    c.allow_registration = true;
    c.admin_email = None;
    c.admin_password = None;
    // No load balancer to tell: stop accepting at once (the rolling-restart test sets its own).
    c.shutdown_delay = std::time::Duration::ZERO;
    c
}

/// A server on this binary's backend, or `None` when that backend cannot be had (no
/// PostgreSQL reachable and none required): the test then ends at once, and the skip has been
/// reported where `cargo test` shows it. Tests start with
/// `let Some(app) = spawn_app().await else { return };`.
pub async fn spawn_app() -> Option<TestApp> {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] with the default test configuration changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let (mut config, dir, db) = fresh_database().await?;
    tweak(&mut config);
    Some(start_on(config, dir, Clock::system(), db).await)
}

/// A fresh empty database of this binary's backend and the test configuration pointing at it,
/// for a test that prepares the database before a server starts on it ([`start_on`]); `None`
/// (reported as a skip) like [`spawn_app`].
pub async fn fresh_database() -> Option<(Config, Arc<TempDir>, Option<Arc<crate::pg::TestDatabase>>)> {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    let db = match crate::BACKEND {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let db = crate::pg::TestDatabase::create().await?;
            config.database_url = db.url.clone();
            Some(Arc::new(db))
        }
    };
    Some((config, dir, db))
}

/// Starts a server for `config` on the SQLite database in `dir`.
pub async fn start(config: Config, dir: Arc<TempDir>, clock: Clock) -> TestApp {
    start_on(config, dir, clock, None).await
}

/// Another instance on the same database as `app` (its own clock, port, hub and denylist).
pub async fn another_instance(app: &TestApp) -> TestApp {
    let mut config = app.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    start_on(config, app.dir.clone(), Clock::system(), app.db.clone()).await
}

/// Starts a server for `config`; `db` keeps a per-test PostgreSQL database alive.
pub async fn start_on(
    config: Config,
    dir: Arc<TempDir>,
    clock: Clock,
    db: Option<Arc<crate::pg::TestDatabase>>,
) -> TestApp {
    init_log();
    let listener = app::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = app::build_state(config.clone(), clock.clone()).await.expect("state builds");
    let (tx, rx) = oneshot::channel::<()>();
    let on_postgres = db.is_some();
    let st = state.clone();
    let handle = tokio::spawn(async move {
        app::serve(listener, st, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    let app = TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        clock,
        state,
        config,
        dir,
        db,
        shutdown: Some(tx),
        handle: Some(handle),
    };
    if on_postgres {
        app.wait_ready().await;
    }
    app
}

impl TestApp {
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("sessiond.db")
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }

    /// Stops this server and starts a fresh one on the same database (a restart).
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        start_on(config, self.dir.clone(), self.clock.clone(), self.db.clone()).await
    }

    /// Waits (bounded) until `/readyz` answers 200: on PostgreSQL, the listener is up and synced.
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let r = self.client.get(self.url("/readyz")).send().await.unwrap();
            if r.status() == StatusCode::OK {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "instance never became ready");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Response {
        self.client.post(self.url(path)).json(&body).send().await.unwrap()
    }

    pub async fn get_auth(&self, path: &str, token: &str) -> Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn post_auth(&self, path: &str, token: &str, body: Option<Value>) -> Response {
        let mut req = self.client.post(self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    pub async fn delete_auth(&self, path: &str, token: &str) -> Response {
        self.client.delete(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.post_json("/v1/auth/register", json!({ "email": email, "password": password })).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json("/v1/auth/login", json!({ "email": email, "password": password })).await
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post_json("/v1/auth/refresh", json!({ "refresh_token": refresh_token })).await
    }

    pub async fn me(&self, access_token: &str) -> Response {
        self.get_auth("/v1/me", access_token).await
    }

    /// Registers a fresh user; returns its email.
    pub async fn new_user(&self) -> String {
        let email = format!("user-{}@example.com", uuid::Uuid::new_v4().simple());
        let r = self.register(&email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
        email
    }

    /// Logs in (a new session); returns the TokenResponse.
    pub async fn session_of(&self, email: &str) -> Tokens {
        let r = self.login(email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK);
        Tokens::from(r.json::<Value>().await.unwrap())
    }

    /// Logs in with a given password.
    pub async fn session_of_with(&self, email: &str, password: &str) -> Tokens {
        let r = self.login(email, password).await;
        assert_eq!(r.status(), StatusCode::OK);
        Tokens::from(r.json::<Value>().await.unwrap())
    }

    /// A fresh user with one session.
    pub async fn new_session(&self) -> Tokens {
        let email = self.new_user().await;
        self.session_of(&email).await
    }

    /// A fresh admin (created through the library, as the bootstrap or `user add` would) with one session.
    pub async fn new_admin(&self) -> Tokens {
        let email = format!("admin-{}@example.com", uuid::Uuid::new_v4().simple());
        self.state
            .accounts
            .register(&email, PASSWORD.into(), true, &Default::default(), sessiond::accounts::Via::Api)
            .await
            .unwrap();
        self.session_of(&email).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The fields of a TokenResponse that tests use.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub session_id: String,
    pub user_id: String,
    pub raw: Value,
}

impl From<Value> for Tokens {
    fn from(v: Value) -> Self {
        Tokens {
            access: v["access_token"].as_str().unwrap().to_string(),
            refresh: v["refresh_token"].as_str().unwrap().to_string(),
            session_id: v["session_id"].as_str().unwrap().to_string(),
            user_id: v["user_id"].as_str().unwrap().to_string(),
            raw: v,
        }
    }
}

/// A connection to a test's database outside sessiond (a second client of it), for what a test
/// must do behind the server's back: old-format rows, direct edits, refused statements.
pub enum RawDb {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl RawDb {
    /// Connects to `url` (creating an SQLite file that does not exist yet).
    pub async fn connect(url: &str) -> Result<RawDb, sqlx::Error> {
        use sqlx::{ConnectOptions, Connection};
        Ok(if url.starts_with("sqlite:") {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
            RawDb::Sqlite(options.create_if_missing(true).connect().await?)
        } else {
            RawDb::Postgres(sqlx::PgConnection::connect(url).await?)
        })
    }

    /// Runs `sql` (one or more statements, no parameters).
    pub async fn execute(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        match self {
            RawDb::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
            RawDb::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(|_| ()),
        }
    }

    /// Applies `migrator` (e.g. an older sessiond's migrations).
    pub async fn migrate(&mut self, migrator: &sqlx::migrate::Migrator) -> Result<(), sqlx::migrate::MigrateError> {
        match self {
            RawDb::Sqlite(c) => migrator.run(c).await,
            RawDb::Postgres(c) => migrator.run(c).await,
        }
    }
}

/// Bytes as an SQL literal of this backend's blob columns.
pub fn sql_blob(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match crate::BACKEND {
        Backend::Sqlite => format!("X'{hex}'"),
        Backend::Postgres => format!("'\\x{hex}'::bytea"),
    }
}

/// A time (ms since the epoch) as an SQL literal of this backend's time columns.
pub fn sql_time(ms: i64) -> String {
    match crate::BACKEND {
        Backend::Sqlite => ms.to_string(),
        Backend::Postgres => format!("to_timestamp({ms} / 1000.0)"),
    }
}

impl TestApp {
    /// A second client of this app's database.
    pub async fn raw_db(&self) -> RawDb {
        RawDb::connect(&self.config.database_url).await.expect("connect to the test database")
    }
}

/// Asserts a problem+json error with `status` and `code`; returns the body.
pub async fn assert_problem(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "unexpected status");
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    body
}
