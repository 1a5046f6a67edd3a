//! The subcommands of docs/API.md §1: `serve` (default), `user add`, `keys rotate`, `migrate`.

use std::io::BufRead;

use anyhow::Context;

use crate::accounts::{normalize_email, Accounts, Via};
use crate::clock::{rfc3339, Clock};
use crate::config::{Cli, Command, Config, KeysCommand, UserCommand};
use crate::error::AppError;
use crate::limits::Limits;
use crate::password::Passwords;
use crate::store::Store;
use crate::{app, audit, password, tokens};

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
        Some(Command::Keys(KeysCommand::Rotate { now, db })) => {
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
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = app::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    let state = app::build_state(config, Clock::system()).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    app::serve(listener, state, app::shutdown_signal()).await?;
    Ok(())
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
