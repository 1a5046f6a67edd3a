//! The subcommands of docs/API.md §1: `serve` (default), `user add`, `keys rotate`, `migrate`.

use std::io::BufRead;

use anyhow::Context;

use crate::clock::{rfc3339, Clock};
use crate::config::{Cli, Command, Config, KeysCommand, UserCommand};
use crate::password::Passwords;
use crate::store::Store;
use crate::{app, audit, password, sessions, tokens};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let store = Store::connect(&config.database_url).await?;
            store.migrate().await?;
            store.close().await;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::User(UserCommand::Add { email, admin }) => add_user(config, &email, admin).await,
        Command::Keys(KeysCommand::Rotate { now }) => {
            let store = Store::connect(&config.database_url).await?;
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

/// `sessiond user add --email E [--admin]`, password on stdin (one line).
async fn add_user(config: Config, email: &str, admin: bool) -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    password::validate(&password).map_err(|_| anyhow::anyhow!("the password must have 8 to 1024 characters"))?;
    let email = sessions::normalize_email(email).map_err(|_| anyhow::anyhow!("the email address is not valid"))?;
    let store = Store::connect(&config.database_url).await?;
    store.migrate().await?;
    let hash = Passwords::new(1).hash(password, None).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let now = Clock::system().now_ms();
    let res = store.create_user(&id, &email, &hash, admin, now).await;
    if res.is_ok() {
        let ev =
            audit::Event::new("user_registered").user(&id).detail(serde_json::json!({ "admin": admin, "via": "cli" }));
        audit::record(&store, now, &audit::Who::system(), ev).await;
    }
    store.close().await;
    match res {
        Ok(()) => {
            println!("{id}");
            Ok(())
        }
        Err(crate::store::StoreError::EmailTaken) => anyhow::bail!("a user with this email already exists"),
        Err(e) => Err(e.into()),
    }
}
