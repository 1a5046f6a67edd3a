//! Rate limits and caps (SECURITY.md P3, W3, W7): login backoff, registrations per IP,
//! unauthenticated sockets per IP, and where a request really comes from (`--trusted-proxies`).
//!
//! **Login** is throttled on *failures*, with exponential backoff, under three keys at once:
//! the (account, IP) pair, the IP (password spraying: one IP, many accounts) and the account
//! (distributed guessing: many IPs, one account). Each key has some free failures, then every
//! further failure blocks it for 1 s, 2 s, 4 s … at most 60 s. A blocked attempt gets `429
//! rate_limited` with `Retry-After` before any password work and does not count as a failure,
//! so hammering does not lengthen the block. A success clears the pair and the account (never
//! the IP). The account key lets the most failures through, so 20 wrong passwords from one IP
//! block that IP, not the user: the real user on another IP logs in at once, and at worst
//! (a distributed attack) after at most 60 s. Times come from the application clock, so tests
//! advance it instead of sleeping. Entries are forgotten 15 minutes after their last failure.
//!
//! **Registrations** per IP use `governor`'s keyed GCRA limiter. **Unauthenticated sockets**
//! are a per-IP gauge, held by a guard until the socket authenticates or closes.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::clock::Millis;
use crate::config::Config;

/// The longest block, and so the largest `Retry-After` (API.md §4: never more than 60 s).
pub const MAX_BLOCK_MS: Millis = 60_000;
/// A key with no failure for this long starts over.
const FORGET_AFTER_MS: Millis = 15 * 60_000;
/// Most keys tracked per table; past it the oldest half is dropped (memory stays bounded).
const MAX_KEYS: usize = 100_000;

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
    login_pair: Backoff<(String, IpAddr)>,
    login_ip: Backoff<IpAddr>,
    login_account: Backoff<String>,
    register: Option<DefaultKeyedRateLimiter<IpAddr>>,
    unauthenticated: DashMap<IpAddr, usize>,
    max_unauthenticated: usize,
}

/// A refused attempt: retry after this many seconds (1..=60).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u64);

fn retry_after(ms: Millis) -> RetryAfter {
    RetryAfter(((ms.clamp(1, MAX_BLOCK_MS) + 999) / 1000) as u64)
}

impl Limits {
    pub fn new(config: &Config) -> Arc<Self> {
        let free = config.login_free_failures;
        let register = NonZeroU32::new(config.register_per_ip_per_hour).map(|n| {
            let per = std::time::Duration::from_secs(3600) / n.get();
            governor::RateLimiter::keyed(Quota::with_period(per).expect("non-zero period").allow_burst(n))
        });
        Arc::new(Limits {
            login_pair: Backoff::new(free),
            login_ip: Backoff::new(free.saturating_mul(4)),
            login_account: Backoff::new(free.saturating_mul(2)),
            register,
            unauthenticated: DashMap::new(),
            max_unauthenticated: config.ws_max_unauthenticated_per_ip,
        })
    }

    /// Whether a login for `account` (normalised email, if it is one) from `ip` may try now.
    pub fn login_allowed(&self, account: Option<&str>, ip: Option<IpAddr>, now: Millis) -> Result<(), RetryAfter> {
        let mut wait = 0;
        if let Some(ip) = ip {
            wait = wait.max(self.login_ip.blocked_for(&ip, now));
            if let Some(a) = account {
                wait = wait.max(self.login_pair.blocked_for(&(a.to_string(), ip), now));
            }
        }
        if let Some(a) = account {
            wait = wait.max(self.login_account.blocked_for(&a.to_string(), now));
        }
        if wait > 0 {
            return Err(retry_after(wait));
        }
        Ok(())
    }

    pub fn login_failed(&self, account: Option<&str>, ip: Option<IpAddr>, now: Millis) {
        if let Some(ip) = ip {
            self.login_ip.failed(ip, now);
            if let Some(a) = account {
                self.login_pair.failed((a.to_string(), ip), now);
            }
        }
        if let Some(a) = account {
            self.login_account.failed(a.to_string(), now);
        }
    }

    pub fn login_succeeded(&self, account: &str, ip: Option<IpAddr>) {
        if let Some(ip) = ip {
            self.login_pair.clear(&(account.to_string(), ip));
        }
        self.login_account.clear(&account.to_string());
    }

    /// One registration attempt from `ip`.
    pub fn register_allowed(&self, ip: Option<IpAddr>) -> Result<(), RetryAfter> {
        let (Some(limiter), Some(ip)) = (&self.register, ip) else { return Ok(()) };
        // Bounded between sweeps too: many addresses (IPv6 makes that cheap) cannot grow the
        // keyed state past MAX_KEYS without first dropping the idle ones.
        if limiter.len() >= MAX_KEYS {
            limiter.retain_recent();
        }
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            retry_after(wait.as_millis().min(MAX_BLOCK_MS as u128) as Millis)
        })
    }

    /// A slot for one more unauthenticated socket from `ip`, or `None` at the cap. Boxed: it
    /// travels through every layer of a socket's task state, and is freed on authentication,
    /// so an idle authenticated socket keeps one pointer-sized hole instead of the guard.
    pub fn unauthenticated_socket(self: &Arc<Self>, ip: Option<IpAddr>) -> Option<UnauthenticatedGuard> {
        let Some(ip) = ip else { return Some(UnauthenticatedGuard(Box::new((self.clone(), None)))) };
        let mut n = self.unauthenticated.entry(ip).or_insert(0);
        if *n >= self.max_unauthenticated {
            return None;
        }
        *n += 1;
        Some(UnauthenticatedGuard(Box::new((self.clone(), Some(ip)))))
    }

    /// Unauthenticated sockets open from `ip` now.
    pub fn unauthenticated_from(&self, ip: IpAddr) -> usize {
        self.unauthenticated.get(&ip).map_or(0, |n| *n)
    }

    /// Forgets idle keys (called by the periodic sweep).
    pub fn prune(&self, now: Millis) {
        self.login_pair.prune(now, false);
        self.login_ip.prune(now, false);
        self.login_account.prune(now, false);
        if let Some(r) = &self.register {
            r.retain_recent();
            r.shrink_to_fit();
        }
    }
}

/// Holds one unauthenticated-socket slot; released on drop (authenticated, or closed).
pub struct UnauthenticatedGuard(Box<(Arc<Limits>, Option<IpAddr>)>);

impl Drop for UnauthenticatedGuard {
    fn drop(&mut self) {
        let (limits, ip) = &*self.0;
        let Some(ip) = *ip else { return };
        let remove = match limits.unauthenticated.get_mut(&ip) {
            Some(mut n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if remove {
            limits.unauthenticated.remove_if(&ip, |_, n| *n == 0);
        }
    }
}

/// Trusted reverse proxies: IP networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    /// A comma list of IPs or CIDR networks.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = match item.parse::<ipnet::IpNet>() {
                Ok(n) => n,
                Err(_) => {
                    item.parse::<IpAddr>().map(ipnet::IpNet::from).map_err(|_| format!("not an IP or CIDR: {item}"))?
                }
            };
            nets.push(net);
        }
        Ok(TrustedProxies(nets))
    }
}

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client address: the peer, unless the peer is a trusted proxy; then the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy (entries left of it could be
    /// written by anyone). Unparsable entries stop the walk at the last trusted hop.
    pub fn client_ip(&self, peer: IpAddr, headers: &axum::http::HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
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
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxies: TrustedProxies = "10.0.0.0/8, 192.168.1.1".parse().unwrap();
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.1.1.1".parse().unwrap());
        let direct: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(proxies.client_ip(direct, &h), direct, "an untrusted peer's header is ignored");
        let proxy: IpAddr = "192.168.1.1".parse().unwrap();
        assert_eq!(proxies.client_ip(proxy, &h), "1.2.3.4".parse::<IpAddr>().unwrap(), "right-most untrusted hop");
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(proxies.client_ip(proxy, &h), proxy);
        assert!("not-an-ip".parse::<TrustedProxies>().is_err());
        assert_eq!("".parse::<TrustedProxies>().unwrap(), TrustedProxies::default());
    }
}
