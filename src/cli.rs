//! The subcommands of docs/API.md §1: `serve` (default), `user add`, `keys rotate`, `migrate`,
//! `service add|list|remove` (docs/API.md §8).

use std::io::BufRead;

use anyhow::Context;

use crate::accounts::{normalize_email, Accounts, Via};
use crate::clock::{rfc3339, Clock};
use crate::config::{Cli, Command, Config, EpochCommand, KeysCommand, ServiceCommand, UserCommand};

pub mod ssf_cmd;
use crate::error::AppError;
use crate::limits::Limits;
use crate::password::Passwords;
use crate::store::Store;
use crate::{app, audit, password, service_credentials, tokens};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command {
        None | Some(Command::Serve(_)) => serve(config).await,
        Some(Command::Migrate(db)) => {
            let store = Store::connect(db.url(&config)).await?;
            store.migrate().await?;
            store.close().await;
            eprintln!("migrations applied");
            Ok(())
        }
        Some(Command::User(UserCommand::Add { email, admin, db })) => {
            add_user(&config, db.url(&config), &email, admin).await
        }
        Some(Command::Keys(KeysCommand::Rotate { ssf: true, db, .. })) => {
            let store = Store::connect(db.url(&config)).await?;
            store.migrate().await?;
            let clock = Clock::system();
            let kid = crate::ssf::Ssf::rotate(&store, &clock).await?;
            let ev = audit::Event::new("ssf_key_rotated").detail(serde_json::json!({ "kid": kid, "via": "cli" }));
            audit::record(&store, clock.now_ms(), &audit::Who::system(), ev).await;
            store.close().await;
            println!("published SET signing key {kid}; it signs from now on");
            Ok(())
        }
        Some(Command::Keys(KeysCommand::Rotate { now, db, .. })) => {
            let store = Store::connect(db.url(&config)).await?;
            store.migrate().await?;
            let clock = Clock::system();
            let (kid, at) = tokens::jwt::rotate(&store, &clock, now).await?;
            let detail = serde_json::json!({ "kid": kid, "activates_at": rfc3339(at), "via": "cli" });
            let ev = audit::Event::new("signing_key_rotated").detail(detail);
            audit::record(&store, clock.now_ms(), &audit::Who::system(), ev).await;
            store.close().await;
            println!("published key {kid}; it signs from {}", rfc3339(at));
            Ok(())
        }
        Some(Command::Backup(args)) => {
            let url = args.db.url(&config);
            anyhow::ensure!(
                url.starts_with("sqlite:"),
                "sessiond backup copies an SQLite database; back PostgreSQL up with its own tools (pg_dump, \
                 base backups), then run `sessiond epoch renew` after restoring one (docs/operations.md)"
            );
            anyhow::ensure!(
                !args.path.exists(),
                "{} exists already: the backup goes to a new file",
                args.path.display()
            );
            let store = Store::connect(url).await?;
            store.migrate().await?;
            let res = store.backup(&args.path).await;
            store.close().await;
            res.with_context(|| format!("backing up to {}", args.path.display()))?;
            eprintln!("backed up to {} (with a feed epoch of its own)", args.path.display());
            Ok(())
        }
        Some(Command::Epoch(EpochCommand::Renew(db))) => {
            let store = Store::connect(db.url(&config)).await?;
            store.migrate().await?;
            let res = store.renew_feed_epoch().await;
            if let Ok(epoch) = &res {
                let ev =
                    audit::Event::new("feed_epoch_renewed").detail(serde_json::json!({ "epoch": epoch, "via": "cli" }));
                audit::record(&store, Clock::system().now_ms(), &audit::Who::system(), ev).await;
            }
            store.close().await;
            println!("{}", res?);
            Ok(())
        }
        Some(Command::Service(cmd)) => service(cmd, &config).await,
        Some(Command::Ssf(cmd)) => ssf_cmd::run(cmd, &config).await,
    }
}

/// `sessiond service add|list|remove` (docs/API.md §8).
async fn service(cmd: ServiceCommand, config: &Config) -> anyhow::Result<()> {
    let db = match &cmd {
        ServiceCommand::Add { db, .. } | ServiceCommand::List { db } | ServiceCommand::Remove { db, .. } => db,
    };
    let store = Store::connect(db.url(config)).await?;
    store.migrate().await?;
    let now = Clock::system().now_ms();
    let who = audit::Who::system();
    let res = match cmd {
        ServiceCommand::Add { name, scopes, ssf_aud, .. } => {
            match service_credentials::create_with_ssf_aud(&store, now, &name, &scopes, ssf_aud.as_ref(), &who).await {
                Ok(Some(secret)) => {
                    let mut list: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
                    if scopes.contains(&service_credentials::Scope::Ssf) {
                        let aud = ssf_aud.as_ref().map_or(name.as_str(), |a| a.as_str());
                        list.push(format!("SSF audience {aud}"));
                    }
                    eprintln!(
                        "created service credential {name} ({}); its secret is below, shown this once: \
                         store it now (only a digest of it is kept)",
                        list.join(", ")
                    );
                    println!("{}", secret.as_str());
                    Ok(())
                }
                Ok(None) => Err(anyhow::anyhow!("a service credential named {name} already exists")),
                Err(e) => Err(e.into()),
            }
        }
        ServiceCommand::List { .. } => {
            let list = service_credentials::list(&store).await?;
            if list.is_empty() {
                eprintln!("no service credentials (create one with `sessiond service add NAME --scope SCOPE`)");
            } else {
                print!("{}", service_table(&list));
            }
            Ok(())
        }
        ServiceCommand::Remove { name, .. } => {
            if service_credentials::remove(&store, now, &name, &who).await? {
                eprintln!("removed service credential {name}: its secret no longer works");
                Ok(())
            } else {
                Err(anyhow::anyhow!("no service credential named {name}"))
            }
        }
    };
    store.close().await;
    res
}

/// `service list`: one line per credential under a header, columns aligned. `SSF AUD` is the
/// `aud` of the credential's Shared Signals stream, `-` without scope `ssf`.
fn service_table(list: &[service_credentials::ServiceCredential]) -> String {
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|c| {
            let scopes: Vec<&str> = c.scopes.iter().map(|s| s.as_str()).collect();
            let used = c.last_used_at.map_or_else(|| "never".to_string(), rfc3339);
            let aud = c.ssf_aud().unwrap_or("-").to_string();
            [c.name.clone(), scopes.join(","), rfc3339(c.created_at), used, aud]
        })
        .collect();
    aligned(["NAME", "SCOPES", "CREATED", "LAST USED", "SSF AUD"], &rows)
}

/// A table for the terminal: `header` then `rows`, columns padded to their widest cell.
pub(crate) fn aligned<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let header = header.map(String::from);
    let mut widths = [0; N];
    for row in std::iter::once(&header).chain(rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let line: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:w$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = app::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    app::run(config, Clock::system(), listener, app::shutdown_signal()).await
}

/// `sessiond user add --email E [--admin]`, password on stdin (one line), or asked for twice
/// without echo at a terminal. Registers through [`Accounts::register`], the path HTTP
/// registration takes (same checks, same audit row).
async fn add_user(config: &Config, database_url: &str, email: &str, admin: bool) -> anyhow::Result<()> {
    let password = read_password(email)?;
    // The same checks `register` makes, before connecting, with the CLI's words.
    password::validate(&password).map_err(|_| anyhow::anyhow!("the password must have 8 to 1024 characters"))?;
    normalize_email(email).map_err(|_| anyhow::anyhow!("the email address is not valid"))?;
    let store = Store::connect(database_url).await?;
    store.migrate().await?;
    let clock = Clock::system();
    let accounts = Accounts::new(store.clone(), Passwords::new(1), Limits::new(config), clock);
    let res = accounts.register(email, password, admin, &audit::Who::system(), Via::Cli).await;
    store.close().await;
    match res {
        Ok(id) => {
            println!("{id}");
            Ok(())
        }
        Err(AppError::EmailTaken) => anyhow::bail!("a user with this email already exists"),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// The new user's password: asked for (twice, no echo) at a terminal, else one line of stdin.
fn read_password(email: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {email}: ")).context("reading the password")?;
        let again = rpassword::prompt_password("The same password again: ").context("reading the password")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        return Ok(first);
    }
    let mut line = String::new();
    let n = std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
    anyhow::ensure!(
        n > 0,
        "no password on stdin: pipe one line, e.g. `sessiond user add --email {email} <<< 'a long password'`"
    );
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
