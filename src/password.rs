//! Password hashing: argon2id at the OWASP parameters, off the async runtime, bounded.
//!
//! Each hash takes ~18 ms of CPU and 19 MiB of memory, so hashing runs in `spawn_blocking`
//! behind a semaphore: a login burst queues here instead of starving sockets and refreshes or
//! growing memory without bound. An unknown email is verified against a dummy hash so that its
//! status, body and timing match a wrong password (OWASP Authentication Cheat Sheet).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::error::AppError;

/// OWASP Password Storage Cheat Sheet minimum for argon2id: m = 19 MiB, t = 2, p = 1.
pub const M_COST_KIB: u32 = 19_456;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;
/// Accepted password lengths, in characters.
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 1024;

fn argon2() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).expect("static argon2 params are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes that may wait for a permit, per permit; past it a request is refused at once with
/// `429` + `Retry-After: 1` (SECURITY.md P4: excess load is shed, not queued without bound).
const QUEUE_PER_PERMIT: usize = 16;

/// Shared hasher. Clones share the semaphore and the dummy hash.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Hashes running or waiting, and the most allowed.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    /// A hash of a random password, verified against when the email is unknown.
    dummy: Arc<str>,
}

/// 400 unless the password has 8–1024 characters.
pub fn validate(pw: &str) -> Result<(), AppError> {
    let n = pw.chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&n) {
        return Err(AppError::InvalidRequest("The password must have 8 to 1024 characters."));
    }
    Ok(())
}

impl Passwords {
    pub fn new(concurrency: usize) -> Self {
        let random = uuid::Uuid::new_v4().to_string();
        let salt = SaltString::generate(&mut OsRng);
        let dummy = argon2().hash_password(random.as_bytes(), &salt).map(|h| h.to_string()).unwrap_or_default();
        let concurrency = concurrency.max(1);
        Passwords {
            permits: Arc::new(Semaphore::new(concurrency)),
            in_flight: Arc::default(),
            max_in_flight: concurrency * (1 + QUEUE_PER_PERMIT),
            dummy: dummy.into(),
        }
    }

    /// A place in the bounded queue, or 429 when it is full.
    fn enter(&self) -> Result<InFlight, AppError> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight(self.in_flight.clone());
        if n >= self.max_in_flight {
            return Err(AppError::RateLimited { retry_after_secs: 1 });
        }
        Ok(slot)
    }

    /// Hashes a password (PHC string).
    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        let _slot = self.enter()?;
        let _permit = self.permits.acquire().await.map_err(|e| AppError::Internal(e.into()))?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| AppError::Internal(anyhow::anyhow!("hashing failed: {e}")))
        })
        .await
        .map_err(|e| AppError::Internal(e.into()))?
    }

    /// Verifies against `hash`, or against the dummy hash when there is none (unknown user),
    /// which always answers false after the same work.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, AppError> {
        let _slot = self.enter()?;
        let _permit = self.permits.acquire().await.map_err(|e| AppError::Internal(e.into()))?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy.to_string());
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| argon2().verify_password(password.as_bytes(), &parsed).is_ok())
                .unwrap_or(false)
        })
        .await
        .map_err(|e| AppError::Internal(e.into()))?;
        Ok(ok && known)
    }
}

/// **Test-only.** An argon2id hash of `password` made with other (e.g. older, weaker)
/// parameters than today's, as a legacy database would hold: what tests of rehashing start from.
#[doc(hidden)]
pub fn hash_with_params(password: &str, m_cost_kib: u32, t_cost: u32, p_cost: u32) -> String {
    let params = Params::new(m_cost_kib, t_cost, p_cost, None).expect("valid argon2 params");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("hashing with valid params succeeds")
        .to_string()
}

/// Whether a stored PHC hash was made with other parameters than today's (weaker, or simply
/// different): the login that proves the password rehashes it (SECURITY.md P1).
pub fn needs_rehash(stored: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else { return true };
    if parsed.algorithm.as_str() != "argon2id" || parsed.version != Some(0x13) {
        return true;
    }
    let get = |k: &str| parsed.params.get_decimal(k);
    get("m") != Some(M_COST_KIB) || get("t") != Some(T_COST) || get("p") != Some(P_COST)
}

/// One hash running or waiting; leaves the count on drop.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
