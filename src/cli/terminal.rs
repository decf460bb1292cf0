//! `citadel terminal`: `citadel terminal NODE` opens a node's terminal in this one (the client is
//! [`client`]; the local tty's raw mode and size are [`tty`]), and `citadel terminal tokens create
//! | ls | revoke` issues, lists and revokes the terminal tokens of a control plane (admin token,
//! the control-plane flags of [`super::remote::PlaneArgs`]). It prints a plain token only once,
//! when it is created, and never a token's hash.

mod client;
mod tty;

use std::path::Path;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};

use super::remote::encode;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TerminalArgs {
    #[command(subcommand)]
    command: Option<TerminalCommand>,
    #[command(flatten)]
    connect: client::ConnectArgs,
}

#[derive(Debug, Subcommand)]
pub enum TerminalCommand {
    /// The terminal tokens of a control plane: create, ls, revoke (admin token).
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
    /// Create a token for a user of an organization; the token is printed this once.
    Create {
        /// The user the token is for (shown to the node with each session).
        #[arg(long, value_name = "USER")]
        user: String,
        /// The organization whose nodes accept it (default: `default`).
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
        /// How long it lives, e.g. 12h or 30d (default: until revoked).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
    /// The tokens: id, user, organization, state, created, expires (never the token).
    Ls {
        /// Only this organization's.
        #[arg(long, value_name = "ORG")]
        org: Option<String>,
    },
    /// Revoke a token: the nodes refuse it from their next refresh on.
    Revoke {
        /// The token's id, as `citadel terminal tokens ls` shows it.
        id: String,
    },
}

pub async fn run(args: TerminalArgs, data_dir: &Path) -> anyhow::Result<()> {
    match args.command {
        Some(TerminalCommand::Tokens(t)) => tokens(t, data_dir).await,
        None => client::run(args.connect, data_dir).await,
    }
}

/// `--expires 30d` as seconds.
pub(super) fn lifetime_s(expires: Option<&str>) -> anyhow::Result<Option<u64>> {
    let Some(e) = expires else { return Ok(None) };
    let d = crate::format::parse_duration(e)?;
    if d.as_secs() == 0 {
        bail!("--expires must be at least one second, not `{e}`");
    }
    Ok(Some(d.as_secs()))
}

async fn tokens(args: TokensArgs, data_dir: &Path) -> anyhow::Result<()> {
    let plane = args.plane.locate(data_dir)?;
    let v = match &args.command {
        TokensCommand::Create { user, org, expires } => {
            let mut body = json!({ "user_id": user });
            if let Some(o) = org {
                body["org_id"] = json!(o);
            }
            if let Some(s) = lifetime_s(expires.as_deref())? {
                body["expires_in_s"] = json!(s);
            }
            let v = plane
                .call(Method::POST, "/api/v1/terminal/tokens", Some(&body))
                .await?;
            if !args.json {
                print_created(&v)?;
                return Ok(());
            }
            v
        }
        TokensCommand::Ls { org } => {
            let path = match org {
                Some(o) => format!("/api/v1/terminal/tokens?org={}", encode(o)),
                None => "/api/v1/terminal/tokens".to_string(),
            };
            plane.call(Method::GET, &path, None).await?
        }
        TokensCommand::Revoke { id } => {
            let path = format!("/api/v1/terminal/tokens/{}/revoke", encode(id));
            let v = plane.call(Method::POST, &path, None).await?;
            if !args.json {
                println!(
                    "revoked {} (user {}, org {})",
                    s(&v["id"]),
                    s(&v["user_id"]),
                    s(&v["org_id"])
                );
                return Ok(());
            }
            v
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_list(&v);
    }
    Ok(())
}

pub(super) fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn print_created(v: &Value) -> anyhow::Result<()> {
    let expires = v["expires_at"].as_str().unwrap_or("never (until revoked)");
    let heading = format!(
        "created terminal token {} for user {} in organization {}, expires {expires}",
        s(&v["id"]),
        s(&v["user_id"]),
        s(&v["org_id"]),
    );
    print_token(v, &heading, "user")
}

/// A created token's heading, then its plain token (shown only this once) for `who`.
pub(super) fn print_token(v: &Value, heading: &str, who: &str) -> anyhow::Result<()> {
    let token = v["token"]
        .as_str()
        .context("the control plane created the token but sent it back empty")?;
    println!("{heading}");
    println!("token (shown only now; give it to the {who}, keep it secret):");
    println!("{token}");
    Ok(())
}

fn print_list(v: &Value) {
    print_tokens(
        v,
        &[("ID", "id"), ("USER", "user_id"), ("ORG", "org_id")],
        "terminal",
    );
}

/// A token list's `columns` (heading, field), then state, created and expires; `kind` names
/// the tokens when there is none.
pub(super) fn print_tokens(v: &Value, columns: &[(&str, &str)], kind: &str) {
    let rows: Vec<Vec<String>> = v["tokens"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let mut row: Vec<String> = columns.iter().map(|(_, f)| s(&t[*f])).collect();
            row.push(s(&t["state"]));
            row.push(s(&t["created_at"]));
            row.push(t["expires_at"].as_str().unwrap_or("never").to_string());
            row
        })
        .collect();
    if rows.is_empty() {
        println!("no {kind} token was created on this control plane");
    } else {
        let mut heads: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
        heads.extend(["STATE", "CREATED", "EXPIRES"]);
        crate::format::table(&heads, &rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_are_whole_seconds_and_never_zero() {
        assert_eq!(lifetime_s(None).unwrap(), None);
        assert_eq!(lifetime_s(Some("30d")).unwrap(), Some(30 * 86_400));
        assert_eq!(lifetime_s(Some("90s")).unwrap(), Some(90));
        assert!(lifetime_s(Some("0s")).is_err());
        assert!(lifetime_s(Some("soon")).is_err());
    }
}
