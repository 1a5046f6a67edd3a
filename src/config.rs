//! Command line and environment configuration (docs/API.md §1).
//!
//! One flat clap struct: every flag also reads `SESSIOND_<FLAG>`, except the database, which is
//! `DATABASE_URL`. Durations accept `30s`, `5m`, `14d` (humantime).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Parses `30s`, `5m`, `14d`, `1h 30m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// Parses a comma separated list, dropping empty items.
fn parse_origins(s: &str) -> Result<Origins, String> {
    let list: Vec<String> =
        s.split(',').map(|o| o.trim().trim_end_matches('/').to_string()).filter(|o| !o.is_empty()).collect();
    Ok(Origins(list))
}

/// A list of exact browser origins (`scheme://host[:port]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins(pub Vec<String>);

#[derive(Debug, Parser)]
#[command(name = "sessiond", version, about = "Session and token service with instant revocation")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

impl Cli {
    /// Parses the process's command line (see [`Cli::parse_args_from`]).
    pub fn parse_args() -> Cli {
        Cli::parse_args_from(std::env::args_os().collect())
    }

    /// Parses a command line. The server's flags may stand before or after `serve`
    /// (`sessiond --listen A serve --issuer B`): they belong to the root command (so the other
    /// subcommands' help lists only their own options) and to `serve` (so `sessiond serve
    /// --help` lists them), and for `serve` the line is parsed again without the `serve` word,
    /// so that every flag lands in one [`Config`].
    pub fn parse_args_from(args: Vec<std::ffi::OsString>) -> Cli {
        let cli = Cli::parse_from(&args);
        if !matches!(cli.command, Some(Command::Serve(_))) {
            return cli;
        }
        // Every root flag takes a value (`--flag value` or `--flag=value`): skip them to find
        // the subcommand word itself, not a flag's value that happens to spell `serve`.
        let mut i = 1;
        while i < args.len() {
            let tok = args[i].to_string_lossy();
            if tok == "serve" {
                let mut rest = args.clone();
                rest.remove(i);
                let mut all = Cli::parse_from(rest);
                all.command = Some(Command::Serve(Box::new(ServeArgs { config: all.config.clone() })));
                return all;
            }
            i += if tok.starts_with("--") && !tok.contains('=') { 2 } else { 1 };
        }
        cli
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default). Takes every server flag, before or after `serve`.
    Serve(Box<ServeArgs>),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage signing keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage the credentials of the app's other services (docs/API.md §8).
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Manage Shared Signals streams (docs/SSF.md §1.3).
    #[command(subcommand)]
    Ssf(SsfCommand),
    /// Apply database migrations and exit.
    Migrate(DbArgs),
    /// Write an online, consistent copy of the SQLite database to PATH (docs/operations.md):
    /// restoring is copying it back while no server runs. The copy has a feed epoch of its
    /// own, so the revocation feed's followers start over from a snapshot after a restore.
    Backup(BackupArgs),
    /// The revocation feed's epoch (docs/operations.md).
    #[command(subcommand)]
    Epoch(EpochCommand),
}

/// `sessiond backup PATH`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Where the copy goes (a new file).
    pub path: std::path::PathBuf,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum EpochCommand {
    /// Give the database a new feed epoch, after restoring it any other way than from a
    /// `sessiond backup` copy (a PostgreSQL dump, a point-in-time recovery): every follower's
    /// cursor becomes unknown and it starts over from a snapshot. Run it before the servers start.
    Renew(DbArgs),
}

/// The server's flags, as `sessiond serve` shows them in its help.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: Config,
}

/// The database of an administrative subcommand.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// `sqlite://…` or `postgres://…` (default: `DATABASE_URL`, else `sqlite://sessiond.db`).
    #[arg(long = "database-url")]
    pub database_url: Option<String>,
}

impl DbArgs {
    /// This subcommand's database: its own flag, else the server configuration's.
    pub fn url<'a>(&'a self, config: &'a Config) -> &'a str {
        self.database_url.as_deref().unwrap_or(&config.database_url)
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its id. The password is read from stdin (one line); at a
    /// terminal it is asked for, twice, without echo.
    Add {
        /// The user's email address (stored trimmed and lower-cased).
        #[arg(long)]
        email: String,
        /// Give the user the admin role.
        #[arg(long)]
        admin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Publish a new signing key. It starts signing once every JWKS cache has seen it (6
    /// minutes), or at once with `--now`; the old key keeps verifying until its tokens expired.
    Rotate {
        /// Sign with the new key at once (after a leak: then log everyone out). Verifiers that
        /// cached the JWKS refuse its tokens until they refetch it.
        #[arg(long)]
        now: bool,
        /// Rotate the RS256 key that signs Shared Signals SETs instead (docs/SSF.md §1.1): it
        /// signs at once; the old key stays published while SETs it signed are undelivered.
        #[arg(long, conflicts_with = "now")]
        ssf: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SsfCommand {
    /// Manage streams.
    #[command(subcommand)]
    Stream(SsfStreamCommand),
    /// Re-queue a stream's dead letters.
    Redeliver {
        /// The stream id (`st_…`).
        id: String,
        /// Only SETs made at or after this time (RFC 3339, or a duration ago such as `2h`).
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SsfStreamCommand {
    /// Create a push stream for a receiver that never calls the management API (Okta, say),
    /// owned by service credential NAME; prints the stream id.
    Add {
        /// The service credential (scope `ssf`) the stream belongs to.
        #[arg(long)]
        service: crate::service_credentials::ServiceName,
        /// The receiver's push endpoint (absolute https).
        #[arg(long)]
        push: String,
        /// The `Authorization` header value sent with every push.
        #[arg(long = "auth-header")]
        auth_header: Option<String>,
        /// An event type URI to deliver; repeat. Default: every supported event.
        #[arg(long = "event", value_name = "URI")]
        events: Vec<String>,
        /// Also put the subject inside each event (`events[type].subject`).
        #[arg(long = "event-subject")]
        event_subject: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the streams: id, owner, method, status, health, pending SETs.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show a stream: configuration (never the authorization header), status, health and its
    /// pending and dead SETs by `jti`.
    Show {
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Pause a stream: SETs are held and sent on enable (a stream-updated event says so first).
    Pause {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Enable a stream.
    Enable {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Disable a stream: held SETs are dropped and none are made until it is enabled.
    Disable {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Delete a stream and every SET it holds.
    Remove {
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service credential and print its secret (`sk_…`) on stdout, alone on one line.
    /// It is shown this once: only a digest of it is stored.
    Add {
        /// 1 to 64 characters: letters, digits, '.', '_' or '-'. Unique.
        name: crate::service_credentials::ServiceName,
        /// What the credential may do: revocations:read (the revocation feed), introspect
        /// (token introspection), ssf (Shared Signals). Repeat for several.
        #[arg(long = "scope", required = true, value_name = "SCOPE")]
        scopes: Vec<crate::service_credentials::Scope>,
        /// With --scope ssf: the `aud` of the credential's Shared Signals stream (1 to 256
        /// printable ASCII characters, no whitespace). Default: NAME.
        #[arg(long = "ssf-aud", value_name = "AUD")]
        ssf_aud: Option<crate::service_credentials::SsfAudience>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the service credentials: name, scopes, created, last used (never the secret).
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove a service credential: its secret stops working at once, on every instance.
    Remove {
        name: crate::service_credentials::ServiceName,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Server configuration: the root command's flags (see [`Cli::parse_args_from`]).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP + WebSocket listen address.
    #[arg(long, env = "SESSIOND_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// `sqlite://…` (embedded, single instance) or `postgres://…` (shared, many instances).
    #[arg(long = "database-url", env = "DATABASE_URL", default_value = "sqlite://sessiond.db")]
    pub database_url: String,

    /// `iss` of every token.
    #[arg(long, env = "SESSIOND_ISSUER", default_value = "http://localhost:8080")]
    pub issuer: String,

    /// `aud` of every access token.
    #[arg(long, env = "SESSIOND_AUDIENCE", default_value = "sessiond")]
    pub audience: String,

    /// Access-token lifetime.
    #[arg(long, env = "SESSIOND_ACCESS_TTL", default_value = "5m", value_parser = parse_duration)]
    pub access_ttl: Duration,

    /// A session unused for this long expires.
    #[arg(long, env = "SESSIOND_REFRESH_IDLE_TTL", default_value = "14d", value_parser = parse_duration)]
    pub refresh_idle_ttl: Duration,

    /// Absolute session lifetime, however active.
    #[arg(long, env = "SESSIOND_SESSION_MAX_AGE", default_value = "30d", value_parser = parse_duration)]
    pub session_max_age: Duration,

    /// How long the immediately previous refresh token still converges on its successor.
    #[arg(long, env = "SESSIOND_REFRESH_REUSE_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub refresh_reuse_grace: Duration,

    /// Comma list of browser origins allowed to open sockets and use cookie refresh
    /// (default: the issuer's origin).
    #[arg(long, env = "SESSIOND_ALLOWED_ORIGINS", value_parser = parse_origins)]
    pub allowed_origins: Option<Origins>,

    /// Whether `POST /v1/auth/register` is open.
    #[arg(long, env = "SESSIOND_ALLOW_REGISTRATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_registration: bool,

    /// Admin created on the first start on an empty database (with `SESSIOND_ADMIN_PASSWORD`);
    /// ignored, with a warning, once the database has users (then: `sessiond user add --admin`).
    #[arg(long, env = "SESSIOND_ADMIN_EMAIL")]
    pub admin_email: Option<String>,

    /// Password of the bootstrap admin. Prefer the environment variable to the flag.
    #[arg(long, env = "SESSIOND_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,

    /// How many password hashes may run at once (each holds ~19 MiB).
    #[arg(long, env = "SESSIOND_PASSWORD_HASH_CONCURRENCY", default_value_t = 2)]
    pub password_hash_concurrency: usize,

    /// How often expired sessions are swept (and, later, pushed as `session_expired`).
    #[arg(long, env = "SESSIOND_SWEEP_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// Authenticated sockets one user may hold on this instance. At the cap a new socket is
    /// admitted and the oldest socket of the user's session holding the most is closed with 4429.
    #[arg(long, env = "SESSIOND_WS_MAX_SOCKETS_PER_USER", default_value_t = 64)]
    pub ws_max_sockets_per_user: usize,

    /// How long a new socket may take to send its `auth` message (else close 4408).
    #[arg(long, env = "SESSIOND_WS_AUTH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub ws_auth_timeout: Duration,

    /// Protocol ping period; a socket that misses two pongs is closed.
    #[arg(long, env = "SESSIOND_WS_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ws_ping_interval: Duration,

    /// On shutdown, how long to wait for sockets to close before exiting.
    #[arg(long, env = "SESSIOND_SHUTDOWN_DRAIN", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_drain: Duration,

    /// On shutdown, how long the instance keeps accepting with `/readyz` answering 503 before
    /// it stops accepting: the time a load balancer needs to notice (docs/operations.md).
    #[arg(long, env = "SESSIOND_SHUTDOWN_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// The deadline of every HTTP request but long polls and streams (docs/API.md §14): past
    /// it the answer is 503 `unavailable` with `Retry-After`.
    #[arg(long, env = "SESSIOND_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// The longest a request or socket `auth` waits on the database (docs/API.md §6): pool
    /// acquire, connect and each statement; past it the answer is 503 `unavailable`.
    #[arg(long, env = "SESSIOND_DB_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_timeout: Duration,

    /// SQLite's `synchronous` (docs/operations.md): `normal` (the default: in WAL mode a commit
    /// survives a crash of the process, the last ones may be lost on a power loss or an OS
    /// crash) or `full` (each commit is on disk before it is answered, slower).
    #[arg(long, env = "SESSIOND_SQLITE_SYNCHRONOUS", default_value = "normal", value_parser = ["normal", "full"])]
    pub sqlite_synchronous: String,

    /// Directory of the browser pages and `sessiond.js` (default: `./static`, else the
    /// source checkout's `static/`).
    #[arg(long, env = "SESSIOND_STATIC_DIR")]
    pub static_dir: Option<std::path::PathBuf>,

    /// Reverse proxies (comma list of IPs or CIDR networks) whose `X-Forwarded-For` is believed;
    /// from anyone else the header is ignored.
    #[arg(long, env = "SESSIOND_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,

    /// Failed logins per account and address before exponential backoff (1 s doubling to 60 s,
    /// with `429` + `Retry-After`). One address over all accounts gets 4× as many, one account
    /// over all addresses 2× (that last block spares proven clients: see `limits`). Failed
    /// current-password checks of `POST /v1/auth/password` count as failed logins.
    #[arg(long, env = "SESSIOND_LOGIN_FREE_FAILURES", default_value_t = 10)]
    pub login_free_failures: u32,

    /// Per-address limits (login backoff, registrations, unauthenticated sockets, the
    /// password-hash share) group IPv4 clients by this prefix length: 32 keys each address
    /// alone; shorter prefixes make a whole network share one allowance (16–32).
    #[arg(long, env = "SESSIOND_IPV4_PREFIX", default_value_t = 32,
        value_parser = clap::value_parser!(u8).range(16..=32))]
    pub ipv4_prefix: u8,

    /// The same for IPv6 (32–128). 64 by default: one host or subscriber usually holds a whole
    /// /64, so keying on the exact address would let it start every limit over at will.
    #[arg(long, env = "SESSIOND_IPV6_PREFIX", default_value_t = 64,
        value_parser = clap::value_parser!(u8).range(32..=128))]
    pub ipv6_prefix: u8,

    /// Registrations per address key (IPv4 address, IPv6 /64 by default) per hour, all of which
    /// may come at once (0 = unlimited).
    #[arg(long, env = "SESSIOND_REGISTER_PER_IP_PER_HOUR", default_value_t = 60)]
    pub register_per_ip_per_hour: u32,

    /// Sockets one address key (IPv4 address, IPv6 /64 by default) may hold open before they
    /// authenticate; the next upgrade gets 429.
    #[arg(long, env = "SESSIOND_WS_MAX_UNAUTHENTICATED_PER_IP", default_value_t = 64)]
    pub ws_max_unauthenticated_per_ip: usize,

    /// Sockets this instance holds at most (keep it under the open-files limit); past it an
    /// upgrade gets 503 `unavailable` with `Retry-After: 1`.
    #[arg(long, env = "SESSIOND_WS_MAX_SOCKETS", default_value_t = 50_000)]
    pub ws_max_sockets: usize,

    /// A second listener that serves only `GET /metrics`, without authentication (for a
    /// Prometheus on a private network or loopback). Unset: no second listener.
    #[arg(long, env = "SESSIOND_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Bearer token that `GET /metrics` on the main listener requires (Prometheus:
    /// `authorization: {credentials: …}`). Unset: the main listener serves `/metrics` only to
    /// loopback clients (after `--trusted-proxies`). Prefer the environment variable.
    #[arg(long, env = "SESSIOND_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<Secret>,

    /// How often the signing keyset is re-read from the database (≤ 60 s per docs/API.md §1).
    #[arg(long, env = "SESSIOND_KEYS_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keys_reload_interval: Duration,

    /// Shared Signals: allow http and loopback/private push endpoints. For tests only: it turns
    /// off the SSRF checks of docs/SSF.md §1.2.
    #[arg(long, env = "SESSIOND_SSF_ALLOW_INSECURE_PUSH")]
    pub ssf_allow_insecure_push: bool,

    /// Shared Signals: how long a long poll waits for a SET (RFC 8936 §2.5).
    #[arg(long, env = "SESSIOND_SSF_POLL_WAIT", default_value = "20s", value_parser = parse_duration)]
    pub ssf_poll_wait: Duration,

    /// Shared Signals: SETs in flight at once per push stream.
    #[arg(long, env = "SESSIOND_SSF_PUSH_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub ssf_push_concurrency: u16,
}

impl Config {
    /// Configuration with every default, as `sessiond serve` with no flags and no environment.
    pub fn defaults() -> Self {
        Cli::parse_from(["sessiond"]).config
    }

    /// Where the pages are served from.
    pub fn static_dir(&self) -> std::path::PathBuf {
        if let Some(d) = &self.static_dir {
            return d.clone();
        }
        let local = std::path::PathBuf::from("static");
        if local.join("index.html").is_file() {
            return local;
        }
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/static"))
    }

    /// The exact origins allowed for sockets and cookie refresh: `--allowed-origins`, else the
    /// issuer's origin. A loopback issuer (`localhost`, `127.0.0.1`, `[::1]`) also allows the
    /// other loopback spellings of the same scheme and port, so the local demo works at both
    /// `http://localhost:8080` and `http://127.0.0.1:8080`.
    pub fn allowed_origins(&self) -> Vec<String> {
        if let Some(o) = &self.allowed_origins {
            return o.0.clone();
        }
        let Some(origin) = origin_of(&self.issuer) else { return Vec::new() };
        let (scheme, hostport) = origin.split_once("://").unwrap_or(("http", ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, Some(p)),
            _ => (hostport, None),
        };
        if !["localhost", "127.0.0.1", "[::1]"].contains(&host) {
            return vec![origin];
        }
        let mut all = vec![origin.clone()];
        for alias in ["localhost", "127.0.0.1", "[::1]"] {
            let o = match port {
                Some(p) => format!("{scheme}://{alias}:{p}"),
                None => format!("{scheme}://{alias}"),
            };
            if o != origin {
                all.push(o);
            }
        }
        all
    }
}

/// `scheme://host[:port]` of a URL, without path.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    Some(format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
}

/// A string that never prints: `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
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
    fn durations_parse_like_the_contract() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("14d").unwrap(), Duration::from_secs(14 * 86400));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn rt8_address_prefixes_default_to_32_and_64_and_are_range_checked() {
        let c = Config::defaults();
        assert_eq!((c.ipv4_prefix, c.ipv6_prefix), (32, 64));
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("sessiond").chain(args.iter().copied()));
        let c = parse(&["--ipv4-prefix", "24", "--ipv6-prefix", "56"]).unwrap().config;
        assert_eq!((c.ipv4_prefix, c.ipv6_prefix), (24, 56));
        for bad in [["--ipv4-prefix", "33"], ["--ipv4-prefix", "8"], ["--ipv6-prefix", "129"], ["--ipv6-prefix", "16"]]
        {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_flags_stand_before_or_after_serve_and_stay_out_of_other_subcommands() {
        let parse = |args: &[&str]| Cli::parse_args_from(args.iter().map(Into::into).collect());
        let cli = parse(&["sessiond", "--listen", "127.0.0.1:1", "serve", "--issuer=https://a.example"]);
        assert!(matches!(cli.command, Some(Command::Serve(_))));
        assert_eq!(cli.config.listen.port(), 1);
        assert_eq!(cli.config.issuer, "https://a.example");
        // A flag's value that spells the subcommand is not the subcommand.
        let cli = parse(&["sessiond", "--audience", "serve", "serve", "--listen", "127.0.0.1:2"]);
        assert_eq!((cli.config.audience.as_str(), cli.config.listen.port()), ("serve", 2));
        assert_eq!(parse(&["sessiond", "--listen", "127.0.0.1:3"]).config.listen.port(), 3);
        // `user add --help` lists its own options only.
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let add = cmd.find_subcommand_mut("user").unwrap().find_subcommand_mut("add").unwrap();
        let help = add.render_long_help().to_string();
        assert!(help.contains("--email") && help.contains("--database-url"), "{help}");
        assert!(!help.contains("--listen") && !help.contains("--access-ttl"), "{help}");
        // `user add --database-url` wins over the root's.
        let cli = parse(&[
            "sessiond",
            "--database-url",
            "sqlite://a.db",
            "user",
            "add",
            "--email",
            "e@x",
            "--database-url",
            "sqlite://b.db",
        ]);
        let Some(Command::User(UserCommand::Add { db, .. })) = &cli.command else { panic!() };
        assert_eq!(db.url(&cli.config), "sqlite://b.db");
    }

    #[test]
    fn default_origin_is_the_issuers() {
        let mut c = Config::defaults();
        c.issuer = "http://localhost:8080".into();
        assert_eq!(c.allowed_origins(), ["http://localhost:8080", "http://127.0.0.1:8080", "http://[::1]:8080"]);
        c.issuer = "https://auth.example.com".into();
        assert_eq!(c.allowed_origins(), ["https://auth.example.com"]);
        c.allowed_origins = Some(Origins(vec!["https://app.example".into()]));
        assert_eq!(c.allowed_origins(), ["https://app.example"]);
        assert_eq!(origin_of("https://Auth.Example.com/x/y"), Some("https://auth.example.com".into()));
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
