//! Password hashing: argon2id at the OWASP parameters, off the async runtime, bounded.
//!
//! Each hash takes ~18 ms of CPU and 19 MiB of memory, so hashing runs in `spawn_blocking`
//! behind a semaphore: a login burst queues here instead of starving sockets and refreshes or
//! growing memory without bound. An unknown email is verified against a dummy hash so that its
//! status, body and timing match a wrong password (OWASP Authentication Cheat Sheet).
//!
//! The queue is shared by everyone (`--password-hash-concurrency` running, 16 waiting per
//! permit, then `429` + `Retry-After: 1`), so each address key (`limits::AddressKey`: an IPv4
//! address, an IPv6 /64) may hold at most [`MAX_PER_ADDRESS`] places in it; past that its
//! requests get the 429 and nobody else's do. One host, or one /64, can no longer fill the queue
//! and refuse every other login. **What this does not stop**: many unrelated addresses (a
//! botnet, or one holder of many /64s) together still fill it; at the defaults (2 permits ≈ 110
//! hashes/s on 2 cores) a few hundred logins per second from a few dozen sources refuse everyone
//! else's logins for as long as they last. Absorbing that needs protection upstream (a CDN or
//! proxy with per-source and global admission, CAPTCHA or proof of work on the login form); the
//! server can only shed the load cheaply, which it does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use dashmap::DashMap;

use crate::error::AppError;
use crate::limits::AddressKey;

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
/// Hashes one address key may have running or waiting at once; past it that address gets `429`
/// + `Retry-After: 1` (RT12: one source must not fill the shared queue).
pub const MAX_PER_ADDRESS: usize = 4;

/// Shared hasher. Clones share the semaphore and the dummy hash.
#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// Hashes running or waiting, and the most allowed.
    in_flight: Arc<AtomicUsize>,
    max_in_flight: usize,
    /// Hashes running or waiting per address key (an entry lives while its count is non-zero,
    /// so the map never holds more keys than the queue has places).
    per_address: Arc<DashMap<AddressKey, usize>>,
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
            per_address: Arc::default(),
            dummy: dummy.into(),
        }
    }

    /// A place in the bounded queue for a request from `from` (an address key; `None` for the
    /// CLI and the bootstrap), or 429 when that key holds its share or the queue is full.
    fn enter(&self, from: Option<AddressKey>) -> Result<InFlight, AppError> {
        let share = match from {
            Some(key) => {
                let mut n = self.per_address.entry(key).or_insert(0);
                if *n >= MAX_PER_ADDRESS {
                    return Err(AppError::RateLimited { retry_after_secs: 1 });
                }
                *n += 1;
                Some(Share(self.per_address.clone(), key))
            }
            None => None,
        };
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight { total: self.in_flight.clone(), _share: share };
        if n >= self.max_in_flight {
            return Err(AppError::RateLimited { retry_after_secs: 1 });
        }
        Ok(slot)
    }

    /// Hashes running or waiting now (all addresses).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Hashes a password (PHC string) for a request from `from`.
    pub async fn hash(&self, password: String, from: Option<AddressKey>) -> Result<String, AppError> {
        let _slot = self.enter(from)?;
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
    /// which always answers false after the same work. `from` as in [`Passwords::hash`].
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
        from: Option<AddressKey>,
    ) -> Result<bool, AppError> {
        let _slot = self.enter(from)?;
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

/// One hash running or waiting; leaves the count (and its address's share) on drop.
struct InFlight {
    total: Arc<AtomicUsize>,
    /// Released with the slot.
    _share: Option<Share>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One place of an address key's share; released on drop, the entry removed at zero.
struct Share(Arc<DashMap<AddressKey, usize>>, AddressKey);

impl Drop for Share {
    fn drop(&mut self) {
        let remove = match self.0.get_mut(&self.1) {
            Some(mut n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if remove {
            self.0.remove_if(&self.1, |_, n| *n == 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt12_one_address_key_holds_at_most_its_share_of_the_queue() {
        let p = Passwords::new(1);
        let key = |s: &str| AddressKey::new(s.parse().unwrap(), 32, 64);
        let a = key("2001:db8:1:2::1");
        let same_64 = key("2001:db8:1:2:ffff::9");
        let held: Vec<_> = (0..MAX_PER_ADDRESS).map(|_| p.enter(Some(a)).unwrap()).collect();
        assert!(matches!(p.enter(Some(same_64)), Err(AppError::RateLimited { retry_after_secs: 1 })));
        let other = p.enter(Some(key("2001:db8:1:3::1"))).expect("another /64 still gets a place");
        let cli = p.enter(None).expect("no address: only the global bound");
        assert_eq!(p.in_flight(), MAX_PER_ADDRESS + 2);
        drop(held);
        drop((other, cli));
        assert_eq!(p.in_flight(), 0);
        assert!(p.per_address.is_empty(), "entries leave with their last place");
        // The global bound still holds for many different keys.
        let mut slots = Vec::new();
        for i in 0..p.max_in_flight {
            slots.push(p.enter(Some(key(&format!("10.0.{}.{}", i / 250, i % 250)))).unwrap());
        }
        assert!(p.enter(Some(key("192.0.2.1"))).is_err(), "the queue is full");
    }
}
