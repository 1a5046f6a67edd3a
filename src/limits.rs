//! Rate limits and caps (SECURITY.md P3, P4, W3, W7): login backoff, registrations per
//! address, unauthenticated sockets per address, the per-address share of the password-hash
//! queue, and where a request really comes from (`--trusted-proxies`).
//!
//! **Addresses** are grouped into [`AddressKey`]s before any per-address control sees them:
//! IPv4 by `--ipv4-prefix` (default /32, each address alone), IPv6 by `--ipv6-prefix` (default
//! /64, the block one subscriber or host gets), IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as IPv4.
//! Keying on the exact IPv6 address would let one host step to a neighbouring address (it holds
//! 2⁶⁴ of them) and start every limit over. [`Limits::key`] is the one place that groups, and
//! every per-address control goes through it: the login address and (account, address) keys,
//! registrations, unauthenticated sockets, the proven-address check below and the hash-queue
//! share (`password.rs`).
//!
//! **Login** (and the password check of `POST /v1/auth/password`, which counts under the same
//! keys, so guesses at either add up) is throttled on *failures*, with exponential backoff,
//! under three keys at once: the (account, address) pair, the address (password spraying: one
//! address, many accounts) and the account (distributed guessing: many addresses, one account).
//! Each key has some free failures (pair `--login-free-failures`, address 4×, account 2×), then
//! every further failure blocks it for 1 s, 2 s, 4 s … at most 60 s. A blocked attempt gets `429
//! rate_limited` with `Retry-After` before any password work and does not count as a failure, so
//! hammering does not lengthen the block. A success clears the pair (never the address, and not
//! the account: a distributed guesser must not get fresh free guesses each time the real user
//! logs in; the account key only slows unproven clients, see below, and decays by itself).
//! Times come from the application clock, so tests advance it instead of sleeping. Entries are
//! forgotten 15 minutes after their last failure.
//!
//! **No malicious account lockout** (ASVS 6.1.1). The pair and address keys count the caller's
//! own failures: they block whoever is behind that address, with the exact `Retry-After`. The
//! account key counts everyone's failures, so if it blocked everyone an attacker could keep any
//! known account locked from a few addresses. It therefore blocks only *unproven* clients. A
//! client is proven for an account when
//! - its login carries the refresh cookie (`__Host-sessiond_refresh`) of a live session of that
//!   account (its current, unrotated token), or
//! - a session of that account was created from its address key within the last 30 days
//!   ([`PROVEN_ADDRESS_MS`]; the `sessions` table keeps each session's address).
//!
//! Proof is looked up in the database only when the account key is what blocks, so the common
//! path stays in memory. An unproven client blocked only by the account key gets `Retry-After:
//! 60` (the cap), never the remaining time, so an attacker cannot read the account's unblock
//! time off its own refusals. The password change never takes a session credential as proof
//! (a stolen session is what its check defends against); only the address proof applies there.
//! Limits of the policy: a guesser behind the same address key as the real user (one NAT, one
//! /64) counts as proven for the account key, but its own pair and address keys still throttle
//! it; a real user on a new address without a live cookie has nothing to prove itself with, so
//! it stays refused while an attack keeps the account blocked, and gets in at most 60 s after
//! the attack stops. Each refusal of an unproven client costs up to three indexed reads (the
//! account, the cookie's session, the account's recent session addresses) instead of none.
//!
//! **Registrations** per address key use `governor`'s keyed GCRA limiter. **Unauthenticated
//! sockets** are a per-address-key gauge, held by a guard until the socket authenticates or
//! closes.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::clock::Millis;
use crate::config::Config;

/// The longest block, and so the largest `Retry-After` (docs/API.md §4: never more than 60 s).
pub const MAX_BLOCK_MS: Millis = 60_000;
/// A key with no failure for this long starts over.
const FORGET_AFTER_MS: Millis = 15 * 60_000;
/// Most keys tracked per table; past it the oldest half is dropped (memory stays bounded).
const MAX_KEYS: usize = 100_000;
/// An address key from which a session of an account was created this recently is proven for
/// that account (the account-wide backoff does not block it).
pub const PROVEN_ADDRESS_MS: Millis = 30 * 86_400_000;
/// Most recent sessions of an account looked at for the proven-address check.
const PROVEN_ADDRESS_SESSIONS: i64 = 256;

/// A client address as every per-address control sees it: the network of `--ipv4-prefix` /
/// `--ipv6-prefix` bits around it (IPv4-mapped IPv6 counts as IPv4). Displays as CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(ipnet::IpNet);

impl AddressKey {
    /// The key of `ip` with these prefix lengths (clamped to the address family's width).
    pub fn new(ip: IpAddr, ipv4_prefix: u8, ipv6_prefix: u8) -> Self {
        let net = match ip.to_canonical() {
            IpAddr::V4(a) => {
                ipnet::IpNet::V4(ipnet::Ipv4Net::new(a, ipv4_prefix.min(32)).expect("prefix clamped to 32").trunc())
            }
            IpAddr::V6(a) => {
                ipnet::IpNet::V6(ipnet::Ipv6Net::new(a, ipv6_prefix.min(128)).expect("prefix clamped to 128").trunc())
            }
        };
        AddressKey(net)
    }
}

impl std::fmt::Display for AddressKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Millis,
    blocked_until: Millis,
}

/// Failure counting with exponential backoff for one kind of key.
struct Backoff<K: Eq + Hash> {
    free: u32,
    map: DashMap<K, Failures>,
}

impl<K: Eq + Hash + Clone> Backoff<K> {
    fn new(free: u32) -> Self {
        Backoff { free, map: DashMap::new() }
    }

    /// Milliseconds this key is still blocked for (0 when free to try).
    fn blocked_for(&self, key: &K, now: Millis) -> Millis {
        self.map.get(key).map_or(0, |f| (f.blocked_until - now).max(0))
    }

    fn failed(&self, key: K, now: Millis) {
        if self.map.len() >= MAX_KEYS {
            self.prune(now, true);
        }
        let mut f = self.map.entry(key).or_insert(Failures { count: 0, last: now, blocked_until: 0 });
        if now - f.last > FORGET_AFTER_MS {
            *f = Failures { count: 0, last: now, blocked_until: 0 };
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count > self.free {
            let doublings = (f.count - self.free - 1).min(16);
            f.blocked_until = now + (1000i64 << doublings).min(MAX_BLOCK_MS);
        }
    }

    fn clear(&self, key: &K) {
        self.map.remove(key);
    }

    /// Drops forgotten keys; with `hard`, also the older half of the rest.
    fn prune(&self, now: Millis, hard: bool) {
        // Kept while a failure is recent (its count still matters) or a block still runs.
        self.map.retain(|_, f| now - f.last <= FORGET_AFTER_MS || f.blocked_until > now);
        if hard && self.map.len() >= MAX_KEYS / 2 {
            let mut lasts: Vec<Millis> = self.map.iter().map(|e| e.last).collect();
            lasts.sort_unstable();
            let cut = lasts[lasts.len() / 2];
            self.map.retain(|_, f| f.last > cut);
        }
    }
}

/// Every limiter of one server. Cheap to share (`Arc`).
pub struct Limits {
    ipv4_prefix: u8,
    ipv6_prefix: u8,
    login_pair: Backoff<(String, AddressKey)>,
    login_address: Backoff<AddressKey>,
    login_account: Backoff<String>,
    register: Option<DefaultKeyedRateLimiter<AddressKey>>,
    unauthenticated: DashMap<AddressKey, usize>,
    max_unauthenticated: usize,
}

/// A refused attempt: retry after this many seconds (1..=60).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

fn retry_after(ms: Millis) -> RetryAfter {
    RetryAfter(((ms.clamp(1, MAX_BLOCK_MS) + 999) / 1000) as u64)
}

/// What the login backoff says about one attempt, before any proof is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginGate {
    /// Free to try.
    Open,
    /// The caller's own failures (the pair or the address key) block it, for exactly this long.
    Blocked(RetryAfter),
    /// Only the account-wide key blocks: a proven client may try, any other is refused with
    /// `Retry-After` at the cap.
    AccountBlocked,
}

impl Limits {
    pub fn new(config: &Config) -> Arc<Self> {
        let free = config.login_free_failures;
        let register = NonZeroU32::new(config.register_per_ip_per_hour).map(|n| {
            let per = std::time::Duration::from_secs(3600) / n.get();
            governor::RateLimiter::keyed(Quota::with_period(per).expect("non-zero period").allow_burst(n))
        });
        Arc::new(Limits {
            ipv4_prefix: config.ipv4_prefix,
            ipv6_prefix: config.ipv6_prefix,
            login_pair: Backoff::new(free),
            login_address: Backoff::new(free.saturating_mul(4)),
            login_account: Backoff::new(free.saturating_mul(2)),
            register,
            unauthenticated: DashMap::new(),
            max_unauthenticated: config.ws_max_unauthenticated_per_ip,
        })
    }

    /// The key every per-address control uses for `ip` (see the module doc).
    pub fn key(&self, ip: IpAddr) -> AddressKey {
        AddressKey::new(ip, self.ipv4_prefix, self.ipv6_prefix)
    }

    /// Where a login (or password check) for `account` (normalised email, if it is one) from
    /// `ip` stands now. Memory only; `Sessions::check_login` adds the proof lookup.
    pub fn login_gate(&self, account: Option<&str>, ip: Option<IpAddr>, now: Millis) -> LoginGate {
        let mut own = 0;
        if let Some(key) = ip.map(|ip| self.key(ip)) {
            own = own.max(self.login_address.blocked_for(&key, now));
            if let Some(a) = account {
                own = own.max(self.login_pair.blocked_for(&(a.to_string(), key), now));
            }
        }
        if own > 0 {
            // Only the caller's own wait: the account's would be an oracle for its block.
            return LoginGate::Blocked(retry_after(own));
        }
        match account {
            Some(a) if self.login_account.blocked_for(&a.to_string(), now) > 0 => LoginGate::AccountBlocked,
            _ => LoginGate::Open,
        }
    }

    pub fn login_failed(&self, account: Option<&str>, ip: Option<IpAddr>, now: Millis) {
        if let Some(key) = ip.map(|ip| self.key(ip)) {
            self.login_address.failed(key, now);
            if let Some(a) = account {
                self.login_pair.failed((a.to_string(), key), now);
            }
        }
        if let Some(a) = account {
            self.login_account.failed(a.to_string(), now);
        }
    }

    /// The password was right: the pair starts over (the address and account keys do not, see
    /// the module doc).
    pub fn login_succeeded(&self, account: &str, ip: Option<IpAddr>) {
        if let Some(key) = ip.map(|ip| self.key(ip)) {
            self.login_pair.clear(&(account.to_string(), key));
        }
    }

    /// One registration attempt from `ip`.
    pub fn register_allowed(&self, ip: Option<IpAddr>) -> Result<(), RetryAfter> {
        let (Some(limiter), Some(ip)) = (&self.register, ip) else { return Ok(()) };
        // Bounded between sweeps too: many keys cannot grow the keyed state past MAX_KEYS
        // without first dropping the idle ones.
        if limiter.len() >= MAX_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(&self.key(ip)).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            retry_after(wait.as_millis().min(MAX_BLOCK_MS as u128) as Millis)
        })
    }

    /// A slot for one more unauthenticated socket from `ip`'s address key, or `None` at the
    /// cap. Boxed: it travels through every layer of a socket's task state, and is freed on
    /// authentication, so an idle authenticated socket keeps one pointer-sized hole instead.
    pub fn unauthenticated_socket(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<UnauthenticatedGuard> {
        let Some(key) = ip.map(|ip| self.key(ip)) else {
            return Some(UnauthenticatedGuard(Box::new((self.clone(), None))));
        };
        let mut n = self.unauthenticated.entry(key).or_insert(0);
        if *n >= self.max_unauthenticated {
            return None;
        }
        *n += 1;
        Some(UnauthenticatedGuard(Box::new((self.clone(), Some(key)))))
    }

    /// Unauthenticated sockets open from `ip`'s address key now.
    pub fn unauthenticated_from(&self, ip: IpAddr) -> usize {
        self.unauthenticated.get(&self.key(ip)).map_or(0, |n| *n)
    }

    /// Forgets idle keys (called by the periodic sweep).
    pub fn prune(&self, now: Millis) {
        self.login_pair.prune(now, false);
        self.login_address.prune(now, false);
        self.login_account.prune(now, false);
        if let Some(r) = &self.register {
            r.retain_recent();
            r.shrink_to_fit();
        }
    }
}

/// `Retry-After` for an unproven client that only the account-wide backoff blocks: the cap,
/// so the account's block tells nothing about when it ends.
pub fn account_block_retry_after() -> u64 {
    retry_after(MAX_BLOCK_MS).0
}

/// Which recent sessions prove an address for an account: those created since the first
/// value, at most the second (the newest).
pub fn proven_address_window(now: Millis) -> (Millis, i64) {
    (now - PROVEN_ADDRESS_MS, PROVEN_ADDRESS_SESSIONS)
}

/// Holds one unauthenticated-socket slot; released on drop (authenticated, or closed).
pub struct UnauthenticatedGuard(Box<(Arc<Limits>, Option<AddressKey>)>);

impl Drop for UnauthenticatedGuard {
    fn drop(&mut self) {
        let (limits, key) = &*self.0;
        let Some(key) = *key else { return };
        let remove = match limits.unauthenticated.get_mut(&key) {
            Some(mut n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if remove {
            limits.unauthenticated.remove_if(&key, |_, n| *n == 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_forgets() {
        let b = Backoff::new(2);
        let now = 1_000_000;
        b.failed("k", now);
        b.failed("k", now);
        assert_eq!(b.blocked_for(&"k", now), 0, "two free failures");
        b.failed("k", now);
        assert_eq!(b.blocked_for(&"k", now), 1000);
        b.failed("k", now);
        assert_eq!(b.blocked_for(&"k", now), 2000);
        for _ in 0..20 {
            b.failed("k", now);
        }
        assert_eq!(b.blocked_for(&"k", now), MAX_BLOCK_MS);
        assert_eq!(b.blocked_for(&"k", now + MAX_BLOCK_MS), 0);
        // A periodic prune keeps recent failures that have not blocked yet.
        let fresh = Backoff::new(2);
        fresh.failed("k", now);
        fresh.failed("k", now);
        fresh.prune(now + 1000, false);
        fresh.failed("k", now + 1000);
        assert_eq!(fresh.blocked_for(&"k", now + 1000), 1000, "the count survived the prune");
        // Long quiet: starts over.
        let later = now + FORGET_AFTER_MS + MAX_BLOCK_MS + 1;
        b.failed("k", later);
        assert_eq!(b.blocked_for(&"k", later), 0);
        b.prune(later + FORGET_AFTER_MS + 1, false);
        assert!(b.map.is_empty());
    }

    #[test]
    fn rt8_address_keys_group_ipv6_by_64_and_ipv4_by_32() {
        let key = |s: &str, v4, v6| AddressKey::new(s.parse().unwrap(), v4, v6);
        // IPv6: the /64 is the key; another /64 is another key.
        assert_eq!(key("2001:db8:1:2::1", 32, 64), key("2001:db8:1:2:ffff:ffff:ffff:ffff", 32, 64));
        assert_ne!(key("2001:db8:1:2::1", 32, 64), key("2001:db8:1:3::1", 32, 64));
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 32, 64).to_string(), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 32, 56).to_string(), "2001:db8:1::/56");
        assert_eq!(key("2001:db8:1:2:3:4:5:6", 32, 128).to_string(), "2001:db8:1:2:3:4:5:6/128");
        // IPv4: each address alone by default, a network with a shorter prefix.
        assert_ne!(key("192.0.2.1", 32, 64), key("192.0.2.2", 32, 64));
        assert_eq!(key("192.0.2.1", 24, 64), key("192.0.2.254", 24, 64));
        assert_eq!(key("192.0.2.77", 24, 64).to_string(), "192.0.2.0/24");
        // IPv4-mapped IPv6 is IPv4 (a dual-stack socket reports IPv4 clients that way) and is
        // not masked by the IPv6 prefix, which would put all of IPv4 in one key.
        assert_eq!(key("::ffff:192.0.2.1", 32, 64), key("192.0.2.1", 32, 64));
        assert_ne!(key("::ffff:192.0.2.1", 32, 64), key("::ffff:192.0.2.2", 32, 64));
        // Out-of-range prefixes are clamped (the config refuses them anyway).
        assert_eq!(key("192.0.2.1", 99, 200), key("192.0.2.1", 32, 128));
    }

    #[test]
    fn rt7_the_account_key_alone_blocks_without_its_remaining_time() {
        let mut c = Config::defaults();
        c.login_free_failures = 1; // pair 1, address 4, account 2 free failures
        let limits = Limits::new(&c);
        let now = 1_000_000;
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let d: IpAddr = "192.0.2.3".parse().unwrap();
        limits.login_failed(Some("u@x"), Some(a), now);
        limits.login_failed(Some("u@x"), Some(b), now);
        limits.login_failed(Some("u@x"), Some(d), now); // account: 3 > 2 free, blocked 1 s
        assert_eq!(limits.login_gate(Some("u@x"), Some("192.0.2.9".parse().unwrap()), now), LoginGate::AccountBlocked);
        assert_eq!(limits.login_gate(Some("other@x"), Some(a), now), LoginGate::Open);
        // `a` fails again: its pair (2 > 1 free) blocks it, with the pair's own time.
        limits.login_failed(Some("u@x"), Some(a), now);
        assert_eq!(limits.login_gate(Some("u@x"), Some(a), now), LoginGate::Blocked(RetryAfter(1)));
        // A success clears the pair only; the account key runs its course.
        limits.login_succeeded("u@x", Some(a));
        assert_eq!(limits.login_gate(Some("u@x"), Some(a), now), LoginGate::AccountBlocked);
        assert_eq!(limits.login_gate(Some("u@x"), Some(a), now + 2_000), LoginGate::Open);
    }
}
