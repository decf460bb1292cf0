//! `citadel console tokens create | ls | revoke`: issues, lists and revokes the read-only console
//! tokens of a control plane (admin token, the control-plane flags of
//! [`super::remote::PlaneArgs`]). It prints a plain token only once, when it is created, and
//! never a token's hash.

use std::path::Path;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::remote::encode;
use super::terminal::{lifetime_s, print_token, print_tokens, s};

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(subcommand)]
    command: ConsoleCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// The web console's read-only tokens: create, ls, revoke (admin token).
    Tokens(TokensArgs),
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    #[command(flatten)]
    plane: super::remote::PlaneArgs,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a read-only console token; the token is printed this once.
    Create {
        /// Who it is for (shown in the list).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// How long it lives, e.g. 12h or 30d (default: until revoked).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// The tokens: id, name, state, created, expires (never the token).
    Ls,
    /// Revoke a token: it no longer signs in, and its sessions end at their next request.
    Revoke {
        /// The token's id, as `citadel console tokens ls` shows it.
        id: String,
    },
}

pub async fn run(args: ConsoleArgs, data_dir: &Path) -> anyhow::Result<()> {
    let ConsoleCommand::Tokens(args) = args.command;
    let plane = args.plane.locate(data_dir)?;
    let v = match &args.command {
        TokensCommand::Create { name, expires } => {
            let mut body = json!({ "name": name.as_deref().unwrap_or("") });
            if let Some(s) = lifetime_s(expires.as_deref())? {
                body["expires_in_s"] = json!(s);
            }
            let v = plane
                .call(Method::POST, "/api/v1/console/tokens", Some(&body))
                .await?;
            if !args.json {
                return print_created(&v);
            }
            v
        }
        TokensCommand::Ls => {
            plane
                .call(Method::GET, "/api/v1/console/tokens", None)
                .await?
        }
        TokensCommand::Revoke { id } => {
            let path = format!("/api/v1/console/tokens/{}/revoke", encode(id));
            let v = plane.call(Method::POST, &path, None).await?;
            if !args.json {
                println!("revoked {} ({})", s(&v["id"]), s(&v["name"]));
                return Ok(());
            }
            v
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_tokens(&v, &[("ID", "id"), ("NAME", "name")], "console");
    }
    Ok(())
}

fn print_created(v: &Value) -> anyhow::Result<()> {
    let expires = v["expires_at"].as_str().unwrap_or("never (until revoked)");
    let heading = format!(
        "created read-only console token {} for {:?}, expires {expires}",
        s(&v["id"]),
        s(&v["name"]),
    );
    print_token(v, &heading, "person")
}
