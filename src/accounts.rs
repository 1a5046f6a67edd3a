//! Accounts: creating users. The one registration path, whoever asks: `POST /v1/auth/register`,
//! `sessiond user add` and the bootstrap admin all go through [`Accounts::register`] (same
//! validation, same hashing, same audit row).
//!
//! Changes to an existing account that end its sessions (password change, disabling, the admin
//! role) belong to [`crate::sessions::Sessions`]: they commit in one transaction with the
//! revocation they cause.

use std::sync::Arc;

use serde_json::json;

use crate::audit::{self, Event, Who};
use crate::clock::Clock;
use crate::error::{AppError, Result};
use crate::limits::Limits;
use crate::password::Passwords;
use crate::store::Store;

/// Where a registration comes from, recorded in its audit row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Api,
    Cli,
    Bootstrap,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Cli => "cli",
            Via::Bootstrap => "bootstrap",
        }
    }
}

/// The accounts service: cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Accounts(Arc<Inner>);

struct Inner {
    store: Store,
    passwords: Passwords,
    limits: Arc<Limits>,
    clock: Clock,
}

impl Accounts {
    pub fn new(store: Store, passwords: Passwords, limits: Arc<Limits>, clock: Clock) -> Self {
        Accounts(Arc::new(Inner { store, passwords, limits, clock }))
    }

    /// Creates a user. Fails with `email_taken` for a known email, `invalid_request` for an
    /// email or password that is not acceptable (before any hashing).
    pub async fn register(&self, email: &str, password: String, admin: bool, who: &Who, via: Via) -> Result<String> {
        let s = &self.0;
        let email = normalize_email(email)?;
        crate::password::validate(&password)?;
        let from = who.ip.as_deref().and_then(|ip| ip.parse().ok()).map(|a| s.limits.key(a));
        let hash = s.passwords.hash(password, from).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let now = s.clock.now_ms();
        s.store.create_user(&id, &email, &hash, admin, now).await?;
        let detail = json!({ "admin": admin, "via": via.as_str() });
        audit::record(&s.store, now, who, Event::new("user_registered").user(&id).detail(detail)).await;
        Ok(id)
    }
}

/// Normalises an email: trimmed, lower case, one `@` with both sides non-empty.
pub fn normalize_email(email: &str) -> Result<String> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 254
        && e.split('@').count() == 2
        && e.split('@').all(|p| !p.is_empty())
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if !valid {
        return Err(AppError::InvalidRequest("The email address is not valid."));
    }
    Ok(e)
}
