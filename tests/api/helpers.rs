//! Test harness: a real server on 127.0.0.1:0 over a temp SQLite file, driven over HTTP.
//!
//! Tracing stays silent unless `TEST_LOG` is set.

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
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

/// The configuration every test starts from: defaults, a temp database, a short sweep.
pub fn test_config(dir: &TempDir) -> Config {
    let mut c = Config::defaults();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.database_url = format!("sqlite://{}", dir.path().join("sessiond.db").display());
    c.issuer = "http://localhost:8080".into();
    c.audience = "sessiond".into();
    c.allow_registration = true;
    c.admin_email = None;
    c.admin_password = None;
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = test_config(&dir);
    tweak(&mut config);
    start(config, dir, Clock::system()).await
}

/// Starts a server for `config` on the database in `dir`.
pub async fn start(config: Config, dir: Arc<TempDir>, clock: Clock) -> TestApp {
    init_log();
    let listener = app::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = app::build_state(config.clone(), clock.clone()).await.expect("state builds");
    let (tx, rx) = oneshot::channel::<()>();
    let st = state.clone();
    let handle = tokio::spawn(async move {
        app::serve(listener, st, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        clock,
        state,
        config,
        dir,
        shutdown: Some(tx),
        handle: Some(handle),
    }
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
        start(config, self.dir.clone(), self.clock.clone()).await
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
        sessiond::sessions::register(&self.state, &email, PASSWORD.into(), true).await.unwrap();
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
