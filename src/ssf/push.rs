//! The HTTP side of push delivery (RFC 8935; docs/SSF.md §1.2 "Push endpoint", §3.1): which
//! receiver endpoints are acceptable, one POST of one compact SET, what the receiver's answer
//! means, and the retry curve. No storage and no scheduling: the dispatcher decides what to do
//! with an [`Outcome`].
//!
//! **SSRF.** A receiver names the URL we POST to, so a stream would otherwise let its owner make
//! sessiond reach addresses only it can reach: loopback services, the private network, a cloud
//! metadata endpoint (169.254.169.254). Three guards, each covering what the one before cannot:
//! - [`check_endpoint`] when a stream is created or updated: absolute `https`, no user info, no
//!   fragment, and an IP-literal host must be public. It also runs again before every push, so a
//!   stream stored under `--ssf-allow-insecure-push` stops being used once the flag is off.
//! - A DNS resolver that refuses a name when any of its addresses is not public. It runs at
//!   connect time, on the addresses actually dialled, so a name that passed the check and later
//!   resolves to 127.0.0.1 (DNS rebinding) is refused too. Refusing the whole name, rather than
//!   dialling its public addresses only, keeps one answer for one name: a receiver whose name
//!   mixes internal and public addresses is misconfigured or hostile either way.
//! - No redirects (a 3xx is an answer, classified like any other), and no proxy taken from the
//!   environment (`HTTPS_PROXY` would dial the proxy, not the checked address).
//!
//! `--ssf-allow-insecure-push` (tests and development only) lifts the address rules and allows
//! `http`.
//!
//! **Secrets.** The `Authorization` value is sent verbatim and marked sensitive; it never appears
//! in an [`Outcome`]'s `error`, nor does the endpoint URL (its query may hold a token): errors
//! carry a status code, the receiver's `err` code, or a short transport reason.

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

/// Time allowed to open the TCP connection and finish the TLS handshake (SSF.md §3.1†).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the whole exchange, connection to the last byte read (SSF.md §3.1†).
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a receiver's answer we read: a failure body (`{"err","description"}`) is tiny, and
/// a receiver must not be able to make us buffer or wait on an endless one.
pub const MAX_RESPONSE_BODY: usize = 4 * 1024;
/// The longest `Retry-After` honoured (SSF.md §3.1†): a receiver cannot park a stream for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);
/// A SET this long after it was stored (`created_at`) is a dead letter, whatever its failure
/// count (SSF.md §3.1†).
pub const MAX_AGE: Duration = Duration::from_secs(72 * 60 * 60);
/// After this many failed attempts a SET is a dead letter: [`backoff`] answers `None`.
pub const MAX_FAILURES: u32 = 9;
/// The longest endpoint URL accepted: far above any real one, and it bounds what is stored.
pub const MAX_ENDPOINT_LEN: usize = 2048;

/// The delay before the retry after the n-th failure (SSF.md §3.1, Keycloak's
/// `OutboxBackoff.DEFAULT_HTTP_PUSH_CURVE`); the first attempt is immediate.
const BACKOFF_CURVE: [Duration; 8] = [
    Duration::from_secs(1),
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(2 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(6 * 60 * 60),
    Duration::from_secs(24 * 60 * 60),
];
/// ±25 %: receivers that failed together (one outage) do not all come back at the same instant.
const BACKOFF_JITTER: f64 = 0.25;

/// RFC 8417 §2.3 / RFC 8935 §2: the media type of a SET in a push request.
const SET_CONTENT_TYPE: &str = "application/secevent+jwt";
const USER_AGENT: &str = concat!("sessiond/", env!("CARGO_PKG_VERSION"));
/// Longest `error` in an [`Outcome`], in characters.
const MAX_ERROR_LEN: usize = 160;

/// What became of one push, for the dispatcher (SSF.md §3.1's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Any 2xx (RFC 8935 §2.2 says 202; sessiond accepts any 2xx). Never resent.
    Delivered,
    /// The receiver will never take this SET: `400 invalid_request` or `413`. RFC 8935 §4: a
    /// structural error "is likely to remain when retransmitting the same SET".
    DeadLetter {
        /// Short and safe to log and store, e.g. `HTTP 400 invalid_request`.
        error: String,
    },
    /// Try again later, after [`backoff`], and no sooner than `retry_after`.
    Retry {
        /// The receiver's `Retry-After` on a 408, 429 or 5xx, capped at [`MAX_RETRY_AFTER`]
        /// (zero for a date already past). The dispatcher waits the larger of this and [`backoff`].
        retry_after: Option<Duration>,
        /// The receiver refused in a way that needs someone to act (a rejected credential,
        /// a wrong URL, a redirect, another 400 code, an address we refuse): mark the stream's
        /// health `failing`. `false` for plain unavailability (timeouts, 5xx, network errors).
        failing: bool,
        /// The receiver's RFC 8935 §2.4 `err` code when it answered 400 with one (only codes that
        /// are short tokens are kept). The dispatcher dead-letters a verification SET refused with
        /// `invalid_state` (SSF §11); `invalid_request` never gets here (it is a [`Outcome::DeadLetter`]).
        err: Option<String>,
        /// Short and safe to log and store, e.g. `HTTP 503`, `HTTP 400 invalid_key`, `timeout: …`.
        error: String,
    },
}

impl Outcome {
    /// A retry that needs attention, for refusals that happen on our side.
    fn failing(error: impl AsRef<str>) -> Outcome {
        Outcome::Retry { retry_after: None, failing: true, err: None, error: short(error.as_ref()) }
    }
}

/// Checks a receiver's `endpoint_url` when a stream is created or updated (SSF.md §1.2): an
/// absolute URL, `https` (`http` only with `allow_insecure`), no user name or password, no
/// fragment, a host; a host that is an IP literal must be a public address, and `localhost`
/// names (RFC 6761 §6.3: they resolve to loopback) are refused, unless `allow_insecure`.
/// Names are resolved only at push time (see the module doc). The error is the message for a
/// 400; it never echoes the URL.
pub fn check_endpoint(url: &str, allow_insecure: bool) -> Result<Url, String> {
    if url.len() > MAX_ENDPOINT_LEN {
        return Err(format!("endpoint_url is too long (at most {MAX_ENDPOINT_LEN} bytes)"));
    }
    // `ParseError`'s messages are fixed phrases ("relative URL without a base"), never the input.
    let parsed = Url::parse(url).map_err(|e| format!("endpoint_url must be an absolute URL ({e})"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        _ => return Err("endpoint_url must use https".to_string()),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("endpoint_url must not contain a user name or password".to_string());
    }
    if parsed.fragment().is_some() {
        return Err("endpoint_url must not have a fragment".to_string());
    }
    let Some(host) = parsed.host_str() else {
        return Err("endpoint_url must have a host".to_string());
    };
    if !allow_insecure {
        // For http(s) the URL parser has already normalised every IPv4 spelling (`2130706433`,
        // `0x7f.1`) to dotted decimal, and IPv6 literals come bracketed.
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            if !is_public(ip) {
                return Err("endpoint_url's host must be a public address (loopback, private, \
                            link-local and other special-purpose addresses are refused)"
                    .to_string());
            }
        } else {
            let name = host.strip_suffix('.').unwrap_or(host);
            if name == "localhost" || name.ends_with(".localhost") {
                return Err("endpoint_url's host must not be localhost".to_string());
            }
        }
    }
    Ok(parsed)
}

/// Whether `ip` may be dialled: a globally reachable unicast address. Everything in IANA's
/// special-purpose registries that is not globally reachable is refused.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// IPv4 ranges never dialled (RFC 6890 and IANA's IPv4 special-purpose registry).
const FORBIDDEN_V4: [(Ipv4Addr, u8); 15] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", incl. unspecified 0.0.0.0
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private (RFC 1918)
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // shared address space, CGNAT (RFC 6598)
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, incl. cloud metadata 169.254.169.254
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation, TEST-NET-1 (RFC 5737)
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast (deprecated, RFC 7526)
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking (RFC 2544)
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation, TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation, TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, incl. broadcast 255.255.255.255
];

/// IPv6 ranges refused inside global unicast 2000::/3 (everything outside it is refused anyway:
/// ::, ::1, fc00::/7, fe80::/10, ff00::/8, 100::/64 …).
const FORBIDDEN_V6: [(Ipv6Addr, u8); 4] = [
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments, incl. Teredo
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation (RFC 3849)
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4: relays to an embedded IPv4 address
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation (RFC 9637)
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    FORBIDDEN_V4.iter().all(|&(net, len)| !in_prefix(u32::from(ip).into(), u32::from(net).into(), len, 32))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // ::ffff:a.b.c.d dials a.b.c.d; so does the NAT64 well-known prefix 64:ff9b::/96 (RFC 6052)
    // through a translator. Both are judged by the IPv4 address they carry.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let bits = u128::from(ip);
    let nat64 = u128::from(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0));
    if in_prefix(bits, nat64, 96, 128) {
        return is_public_v4(Ipv4Addr::from(bits as u32));
    }
    let global_unicast = u128::from(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0));
    in_prefix(bits, global_unicast, 3, 128)
        && FORBIDDEN_V6.iter().all(|&(net, len)| !in_prefix(bits, u128::from(net), len, 128))
}

/// Whether the `width`-bit address `ip` lies in `net`/`len`.
fn in_prefix(ip: u128, net: u128, len: u8, width: u8) -> bool {
    let shift = u32::from(width - len);
    len == 0 || ip >> shift == net >> shift
}

/// Sends SETs to receivers. Cheap to clone: one connection pool shared by every clone.
#[derive(Debug, Clone)]
pub struct Pusher {
    /// No redirects, no proxy, rustls, the guarded resolver, connect and total timeouts.
    client: reqwest::Client,
    /// `--ssf-allow-insecure-push`: `http` and non-public addresses allowed (tests only).
    allow_insecure: bool,
}

impl Pusher {
    /// A pusher with the contract's timeouts ([`CONNECT_TIMEOUT`], [`TOTAL_TIMEOUT`]).
    pub fn new(allow_insecure: bool) -> Pusher {
        Self::with_timeouts(allow_insecure, CONNECT_TIMEOUT, TOTAL_TIMEOUT)
    }

    /// A pusher with other timeouts (tests: a receiver that never answers, in milliseconds).
    pub fn with_timeouts(allow_insecure: bool, connect: Duration, total: Duration) -> Pusher {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(!allow_insecure)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(connect)
            .timeout(total)
            .dns_resolver(Arc::new(GuardedResolver { allow_insecure }))
            .user_agent(USER_AGENT)
            .build()
            // Fails only if the TLS backend cannot initialise (rustls with ring and bundled
            // roots: no system state involved), a build defect rather than a runtime condition.
            .expect("the push HTTP client builds");
        Pusher { client, allow_insecure }
    }

    /// POSTs one compact SET to `url` (RFC 8935 §2): `Content-Type: application/secevent+jwt`,
    /// `Accept: application/json`, and `authorization` verbatim when given (SSF §6.1.1), else no
    /// `Authorization` at all. The URL is checked again first (see [`check_endpoint`]).
    pub async fn push(&self, url: &str, authorization: Option<&str>, set: &str) -> Outcome {
        match check_endpoint(url, self.allow_insecure) {
            Ok(url) => self.deliver(url, authorization, set).await,
            Err(why) => Outcome::failing(format!("endpoint refused: {why}")),
        }
    }

    /// [`Pusher::push`] after the URL check; the resolver still guards names.
    async fn deliver(&self, url: Url, authorization: Option<&str>, set: &str) -> Outcome {
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, SET_CONTENT_TYPE)
            .header(ACCEPT, "application/json")
            .body(set.to_owned());
        if let Some(value) = authorization {
            // `from_bytes`, not `from_str`: verbatim means any byte a header may carry. CR, LF
            // and other controls are refused, so the value cannot inject a header.
            let Ok(mut value) = HeaderValue::from_bytes(value.as_bytes()) else {
                return Outcome::failing("authorization_header is not a valid header value");
            };
            value.set_sensitive(true);
            request = request.header(AUTHORIZATION, value);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(e) => return from_transport_error(e),
        };
        let status = response.status();
        let retry_after = response.headers().get(RETRY_AFTER).cloned();
        // Only a 400's body is read (for its `err`); a 2xx's is drained too, within the same bound,
        // so its connection can go back to the pool.
        let body = if status == StatusCode::BAD_REQUEST || status.is_success() {
            read_bounded(&mut response, MAX_RESPONSE_BODY).await
        } else {
            Vec::new()
        };
        classify(status, retry_after.as_ref(), &body, SystemTime::now())
    }
}

/// Reads at most `limit` bytes of the body; a read error ends it early (the caller then sees a
/// truncated body, which a 400 treats as unparsable). The total timeout still bounds the wait.
async fn read_bounded(response: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// The receiver's answer → an [`Outcome`] (SSF.md §3.1's table). `now` dates `Retry-After`.
fn classify(status: StatusCode, retry_after: Option<&HeaderValue>, body: &[u8], now: SystemTime) -> Outcome {
    let code = status.as_u16();
    let retry =
        |failing: bool, err: Option<String>, error: String| Outcome::Retry { retry_after: None, failing, err, error };
    match code {
        200..=299 => Outcome::Delivered,
        413 => Outcome::DeadLetter { error: "HTTP 413".to_string() },
        400 => match err_code(body) {
            Some(err) if err == "invalid_request" => Outcome::DeadLetter { error: format!("HTTP 400 {err}") },
            Some(err) => retry(true, Some(err.clone()), format!("HTTP 400 {err}")),
            None => retry(true, None, "HTTP 400 without an err code".to_string()),
        },
        408 | 429 | 500..=599 => Outcome::Retry {
            retry_after: parse_retry_after(retry_after, now),
            failing: false,
            err: None,
            error: format!("HTTP {code}"),
        },
        300..=399 => retry(true, None, format!("HTTP {code} (redirects are not followed)")),
        // 401, 403, 404, 405, 410, and any answer the table does not name.
        _ => retry(true, None, format!("HTTP {code}")),
    }
}

/// The `err` of an RFC 8935 §2.3 failure body, if the body is one and the code is a short token
/// (a receiver's free text is not stored or logged).
fn err_code(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Failure {
        err: String,
    }
    let failure: Failure = serde_json::from_slice(body).ok()?;
    let token = !failure.err.is_empty()
        && failure.err.len() <= 64
        && failure.err.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    token.then_some(failure.err)
}

/// `Retry-After` (RFC 9110 §10.2.3): delay-seconds or an HTTP-date, capped at
/// [`MAX_RETRY_AFTER`]; a date already past means no wait. Anything else is ignored.
fn parse_retry_after(value: Option<&HeaderValue>, now: SystemTime) -> Option<Duration> {
    let text = value?.to_str().ok()?.trim();
    let wait = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time".
        text.parse::<u64>().map(Duration::from_secs).unwrap_or(MAX_RETRY_AFTER)
    } else {
        let at = httpdate::parse_http_date(text).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A request that got no HTTP answer → a retry; `failing` only when our resolver refused.
fn from_transport_error(e: reqwest::Error) -> Outcome {
    // `without_url`: reqwest's Display appends the URL, whose query may hold a secret.
    let e = e.without_url();
    let mut innermost: &(dyn StdError + 'static) = &e;
    loop {
        if innermost.downcast_ref::<ForbiddenAddress>().is_some() {
            return Outcome::failing(format!("endpoint refused: {ForbiddenAddress}"));
        }
        match innermost.source() {
            Some(next) => innermost = next,
            None => break,
        }
    }
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    Outcome::Retry { retry_after: None, failing: false, err: None, error: short(&format!("{kind}: {innermost}")) }
}

/// `text` without control characters, at most [`MAX_ERROR_LEN`] characters.
fn short(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_ERROR_LEN).collect()
}

/// The delay before the next attempt of a SET that has failed `failures` times (SSF.md §3.1):
/// 1 s, 5 s, 30 s, 2 min, 10 min, 1 h, 6 h, 24 h, each ±25 % at random; `Some(ZERO)` for 0 (the
/// first attempt is immediate); `None` from [`MAX_FAILURES`] on: the SET is a dead letter.
pub fn backoff(failures: u32) -> Option<Duration> {
    if failures == 0 {
        return Some(Duration::ZERO);
    }
    let base = *BACKOFF_CURVE.get(usize::try_from(failures - 1).ok()?)?;
    let factor = rand::thread_rng().gen_range(1.0 - BACKOFF_JITTER..=1.0 + BACKOFF_JITTER);
    Some(base.mul_f64(factor))
}

/// The resolver refused a name because one of its addresses is not public.
#[derive(Debug, thiserror::Error)]
#[error("the host resolves to a non-public address")]
struct ForbiddenAddress;

/// Resolves with the system resolver (through tokio) and refuses a name any of whose addresses
/// is not public, unless `allow_insecure`. See the module doc for why at connect time.
#[derive(Debug)]
struct GuardedResolver {
    allow_insecure: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_insecure = self.allow_insecure;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err("the host has no addresses".into());
            }
            if !allow_insecure && !addrs.iter().all(|addr| is_public(addr.ip())) {
                return Err(ForbiddenAddress.into());
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, Uri};
    use axum::response::{IntoResponse, Response};
    use axum::Router;

    #[test]
    fn check_endpoint_accepts_public_https_and_refuses_the_rest() {
        let accepted = [
            "https://rx.example.com/events",
            "https://rx.example.com:8443/events?tenant=1",
            "https://93.184.216.34/events",
            "https://[2606:4700:4700::1111]/events",
            "https://[::ffff:8.8.8.8]/events",
        ];
        for url in accepted {
            assert!(check_endpoint(url, false).is_ok(), "{url} refused: {:?}", check_endpoint(url, false));
        }
        let refused = [
            "http://rx.example.com/events",
            "ftp://rx.example.com/events",
            "/events",
            "rx.example.com/events",
            "https://user:pw@rx.example.com/events",
            "https://user@rx.example.com/events",
            "https://rx.example.com/events#frag",
            "https://rx.example.com/events#",
            "https://127.0.0.1/events",
            "https://127.1.2.3/events",
            "https://2130706433/events", // 127.0.0.1 spelled as one number
            "https://0x7f.1/events",
            "https://[::1]/events",
            "https://10.0.0.1/events",
            "https://172.16.5.4/events",
            "https://192.168.1.1/events",
            "https://169.254.169.254/latest/meta-data/",
            "https://0.0.0.0/events",
            "https://[::]/events",
            "https://[::ffff:127.0.0.1]/events",
            "https://[::ffff:169.254.169.254]/events",
            "https://[64:ff9b::a9fe:a9fe]/events", // NAT64 of 169.254.169.254
            "https://100.64.0.1/events",
            "https://224.0.0.1/events",
            "https://255.255.255.255/events",
            "https://192.0.2.10/events",
            "https://[fd00::1]/events",
            "https://[fe80::1]/events",
            "https://[ff02::1]/events",
            "https://[2001:db8::1]/events",
            "https://localhost/events",
            "https://localhost./events",
            "https://api.localhost/events",
        ];
        for url in refused {
            let why = check_endpoint(url, false).expect_err(url);
            assert!(why.starts_with("endpoint_url"), "{url}: {why}");
        }
        let long = format!("https://rx.example.com/{}", "a".repeat(MAX_ENDPOINT_LEN));
        assert!(check_endpoint(&long, false).is_err());
        assert!(check_endpoint("https://rx.example.com/events", false).is_ok());
    }

    #[test]
    fn check_endpoint_errors_never_echo_the_url() {
        for url in ["https://user:s3cret@rx.example.com/", "http://rx.example.com/?token=s3cret", "s3cret"] {
            let why = check_endpoint(url, false).expect_err(url);
            assert!(!why.contains("s3cret"), "{why}");
        }
    }

    #[test]
    fn insecure_allows_http_and_loopback_but_not_userinfo_or_fragments() {
        for url in ["http://127.0.0.1:8080/events", "http://[::1]/x", "http://localhost/x", "https://10.0.0.1/x"] {
            assert!(check_endpoint(url, true).is_ok(), "{url}");
        }
        for url in ["ftp://127.0.0.1/x", "http://u:p@127.0.0.1/x", "http://127.0.0.1/x#f", "/x"] {
            assert!(check_endpoint(url, true).is_err(), "{url}");
        }
    }

    #[test]
    fn address_classification() {
        for ip in ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
        let forbidden = [
            "0.0.0.0",
            "0.1.2.3",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.0.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.251",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ];
        for ip in forbidden {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        // Neighbours of the refused ranges stay public.
        for ip in ["100.128.0.1", "172.32.0.1", "169.253.255.255", "11.0.0.1", "223.255.255.255"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn backoff_follows_the_curve_within_jitter() {
        assert_eq!(backoff(0), Some(Duration::ZERO));
        let curve = [1, 5, 30, 120, 600, 3600, 6 * 3600, 24 * 3600];
        for (i, secs) in curve.into_iter().enumerate() {
            let failures = u32::try_from(i).unwrap() + 1;
            let base = Duration::from_secs(secs);
            for _ in 0..50 {
                let delay = backoff(failures).expect("a delay before the 9th failure");
                assert!(delay >= base.mul_f64(0.75) && delay <= base.mul_f64(1.25), "{failures}: {delay:?}");
            }
        }
        assert_eq!(backoff(MAX_FAILURES), None);
        assert_eq!(backoff(9), None);
        assert_eq!(backoff(u32::MAX), None);
        assert_eq!(MAX_AGE, Duration::from_secs(72 * 3600));
    }

    #[test]
    fn retry_after_seconds_dates_and_cap() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:47:37 GMT").unwrap();
        let header = |v: &'static str| HeaderValue::from_static(v);
        let parse = |v| parse_retry_after(Some(&header(v)), now);
        assert_eq!(parse("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse("0"), Some(Duration::ZERO));
        assert_eq!(parse("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("99999999999999999999999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::from_secs(120)));
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), Some(Duration::from_secs(120)));
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), Some(Duration::from_secs(120)));
        assert_eq!(parse("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse("Mon, 07 Nov 1994 08:47:37 GMT"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse("-5"), None);
        assert_eq!(parse("+5"), None);
        assert_eq!(parse("soon"), None);
        assert_eq!(parse_retry_after(None, now), None);
    }

    #[test]
    fn err_codes_are_kept_only_as_short_tokens() {
        assert_eq!(err_code(br#"{"err":"invalid_key","description":"x"}"#).as_deref(), Some("invalid_key"));
        assert_eq!(err_code(br#"{"err":"two words"}"#), None);
        assert_eq!(err_code(format!(r#"{{"err":"{}"}}"#, "a".repeat(65)).as_bytes()), None);
        assert_eq!(err_code(br#"{"err":7}"#), None);
        assert_eq!(err_code(br#"{"description":"x"}"#), None);
        assert_eq!(err_code(b"<html>"), None);
    }

    /// One request as the scripted receiver saw it.
    struct Seen {
        path: String,
        headers: HeaderMap,
        body: Bytes,
    }

    type Log = Arc<Mutex<Vec<Seen>>>;

    /// A receiver on 127.0.0.1 whose answer is picked by the request path.
    async fn receiver() -> (SocketAddr, Log) {
        let log = Log::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(scripted).with_state(log.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, log)
    }

    async fn scripted(State(log): State<Log>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let path = uri.path().to_string();
        log.lock().unwrap().push(Seen { path: path.clone(), headers, body });
        let json = |err: &str| {
            let body = serde_json::json!({"err": err, "description": "scripted"}).to_string();
            (StatusCode::BAD_REQUEST, [(CONTENT_TYPE, "application/json")], body).into_response()
        };
        match path.as_str() {
            "/400/garbage" => (StatusCode::BAD_REQUEST, "not json").into_response(),
            // A valid failure body behind 1 MiB of padding: only the first 4 KiB are read.
            "/400/huge" => {
                let padding = " ".repeat(1 << 20);
                (StatusCode::BAD_REQUEST, format!(r#"{{{padding}"err":"invalid_request"}}"#)).into_response()
            }
            "/302" => (StatusCode::FOUND, [(reqwest::header::LOCATION, "/202")]).into_response(),
            "/503" => (StatusCode::SERVICE_UNAVAILABLE, [(RETRY_AFTER, "7")]).into_response(),
            "/429" => (StatusCode::TOO_MANY_REQUESTS, [(RETRY_AFTER, "999999")]).into_response(),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                StatusCode::ACCEPTED.into_response()
            }
            other => match other.strip_prefix("/400/") {
                Some(err) => json(err),
                None => {
                    let code = other.trim_start_matches('/').parse().unwrap_or(500);
                    StatusCode::from_u16(code).unwrap().into_response()
                }
            },
        }
    }

    fn retry(failing: bool, err: Option<&str>, error: &str) -> Outcome {
        Outcome::Retry { retry_after: None, failing, err: err.map(str::to_string), error: error.to_string() }
    }

    #[tokio::test]
    async fn receiver_answers_are_classified_per_the_table() {
        let (addr, log) = receiver().await;
        let pusher = Pusher::new(true);
        let cases = [
            ("/202", Outcome::Delivered),
            ("/200", Outcome::Delivered),
            ("/204", Outcome::Delivered),
            ("/400/invalid_request", Outcome::DeadLetter { error: "HTTP 400 invalid_request".to_string() }),
            ("/413", Outcome::DeadLetter { error: "HTTP 413".to_string() }),
            ("/400/invalid_key", retry(true, Some("invalid_key"), "HTTP 400 invalid_key")),
            ("/400/invalid_state", retry(true, Some("invalid_state"), "HTTP 400 invalid_state")),
            ("/400/garbage", retry(true, None, "HTTP 400 without an err code")),
            ("/400/huge", retry(true, None, "HTTP 400 without an err code")),
            ("/401", retry(true, None, "HTTP 401")),
            ("/403", retry(true, None, "HTTP 403")),
            ("/404", retry(true, None, "HTTP 404")),
            ("/405", retry(true, None, "HTTP 405")),
            ("/410", retry(true, None, "HTTP 410")),
            ("/302", retry(true, None, "HTTP 302 (redirects are not followed)")),
            ("/408", retry(false, None, "HTTP 408")),
            ("/500", retry(false, None, "HTTP 500")),
            (
                "/503",
                Outcome::Retry {
                    retry_after: Some(Duration::from_secs(7)),
                    failing: false,
                    err: None,
                    error: "HTTP 503".to_string(),
                },
            ),
            (
                "/429",
                Outcome::Retry {
                    retry_after: Some(Duration::from_secs(3600)),
                    failing: false,
                    err: None,
                    error: "HTTP 429".to_string(),
                },
            ),
        ];
        for (path, expected) in cases {
            let outcome = pusher.push(&format!("http://{addr}{path}"), None, "a.b.c").await;
            assert_eq!(outcome, expected, "{path}");
        }
        // Exactly one request per push: the 302's Location (/202) was not followed.
        let paths: Vec<String> = log.lock().unwrap().iter().map(|seen| seen.path.clone()).collect();
        let expected: Vec<&str> = [
            "/202",
            "/200",
            "/204",
            "/400/invalid_request",
            "/413",
            "/400/invalid_key",
            "/400/invalid_state",
            "/400/garbage",
            "/400/huge",
            "/401",
            "/403",
            "/404",
            "/405",
            "/410",
            "/302",
            "/408",
            "/500",
            "/503",
            "/429",
        ]
        .to_vec();
        assert_eq!(paths, expected);
    }

    #[tokio::test]
    async fn request_carries_the_set_and_the_authorization_verbatim() {
        let (addr, log) = receiver().await;
        let pusher = Pusher::new(true);
        let set = "eyJ0eXAiOiJzZWNldmVudCtqd3QifQ.eyJqdGkiOiIxIn0.c2ln";
        let authorization = "Bearer rx-7f3a  ~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}";
        let url = format!("http://{addr}/202");
        assert_eq!(pusher.push(&url, Some(authorization), set).await, Outcome::Delivered);
        assert_eq!(pusher.push(&url, None, set).await, Outcome::Delivered);

        let log = log.lock().unwrap();
        let [with, without] = &log[..] else { panic!("{} requests", log.len()) };
        for seen in [with, without] {
            assert_eq!(seen.headers.get(CONTENT_TYPE).unwrap().as_bytes(), b"application/secevent+jwt");
            assert_eq!(seen.headers.get(ACCEPT).unwrap().as_bytes(), b"application/json");
            assert_eq!(seen.body.as_ref(), set.as_bytes());
        }
        let sent: Vec<&[u8]> = with.headers.get_all(AUTHORIZATION).iter().map(HeaderValue::as_bytes).collect();
        assert_eq!(sent, [authorization.as_bytes()]);
        assert!(without.headers.get(AUTHORIZATION).is_none());
    }

    #[tokio::test]
    async fn an_authorization_that_is_not_a_header_value_is_not_sent() {
        let (addr, log) = receiver().await;
        let outcome =
            Pusher::new(true).push(&format!("http://{addr}/202"), Some("Bearer a\r\nX-Evil: 1"), "a.b.c").await;
        let Outcome::Retry { failing: true, error, .. } = outcome else { panic!("{outcome:?}") };
        assert!(!error.contains("Evil"), "{error}");
        assert!(log.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn connection_refused_is_a_plain_retry_without_the_url() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let outcome =
            Pusher::new(true).push(&format!("http://{addr}/hook?token=s3cret"), Some("Bearer s3cret"), "a.b.c").await;
        let Outcome::Retry { retry_after: None, failing: false, err: None, error } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(error.starts_with("connect: "), "{error}");
        assert!(!error.contains("s3cret") && !error.contains("/hook"), "{error}");
    }

    #[tokio::test]
    async fn a_receiver_slower_than_the_timeout_is_a_retry() {
        let (addr, _log) = receiver().await;
        let pusher = Pusher::with_timeouts(true, Duration::from_millis(300), Duration::from_millis(300));
        let started = tokio::time::Instant::now();
        let outcome = pusher.push(&format!("http://{addr}/slow"), None, "a.b.c").await;
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        let Outcome::Retry { retry_after: None, failing: false, error, .. } = outcome else { panic!("{outcome:?}") };
        assert!(error.starts_with("timeout: "), "{error}");
    }

    #[tokio::test]
    async fn without_insecure_loopback_and_http_are_never_dialled() {
        let (addr, log) = receiver().await;
        let pusher = Pusher::new(false);
        for url in [
            format!("http://{addr}/202"),
            format!("https://{addr}/202"),
            format!("https://localhost:{}/202", addr.port()),
        ] {
            let outcome = pusher.push(&url, None, "a.b.c").await;
            let Outcome::Retry { failing: true, error, .. } = outcome else { panic!("{url}: {outcome:?}") };
            assert!(error.starts_with("endpoint refused: "), "{url}: {error}");
        }
        assert!(log.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_non_public_addresses() {
        let refused = GuardedResolver { allow_insecure: false }.resolve("localhost".parse().unwrap()).await;
        let Err(e) = refused else { panic!("localhost resolved") };
        assert!(e.downcast_ref::<ForbiddenAddress>().is_some(), "{e}");

        let addrs: Vec<SocketAddr> =
            GuardedResolver { allow_insecure: true }.resolve("localhost".parse().unwrap()).await.unwrap().collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()), "{addrs:?}");

        // Through the client, past the URL check (as a name that rebinds to 127.0.0.1 would get):
        // refused at connect time, before any byte reaches the listener.
        let (addr, log) = receiver().await;
        let url = Url::parse(&format!("https://localhost:{}/202", addr.port())).unwrap();
        let outcome = Pusher::new(false).deliver(url, Some("Bearer s3cret"), "a.b.c").await;
        assert_eq!(outcome, Outcome::failing("endpoint refused: the host resolves to a non-public address"));
        assert!(log.lock().unwrap().is_empty());
    }
}
