//! `truc account …`: add, list, disable, enable, passwd, token and whoami
//! for the operators' named accounts, over the typed admin client.
//!
//! Invariants: a password is read from standard input (one line), never
//! from an argument (it would be in the shell history and the process
//! list); a token is printed only by `token`, once; what the caller's role
//! may not do is refused by the hub (exit 3), not guessed here.

use std::io::{BufRead, IsTerminal, Write};

use clap::Subcommand;

use crate::api::types::{AddAccount, IssueToken, Role, SetPassword};
use crate::cli::admin::Admin;
use crate::cli::{opt, print_json, table, CliError};
use crate::core::config::Config;

/// `truc account …`
#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Add an account; its password is read from standard input.
    Add {
        /// Login name: 2-64 of a-z, 0-9, '.', '_', '-'.
        name: String,
        /// admin, operator, auditor or agency.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// The agency of an agency account (its code).
        #[arg(long)]
        agency: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List accounts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: it can no longer log in, and its API tokens are
    /// revoked.
    Disable {
        /// Account name.
        name: String,
    },
    /// Enable a disabled account (issue it new tokens).
    Enable {
        /// Account name.
        name: String,
    },
    /// Set an account's password, read from standard input (any account
    /// may set its own).
    Passwd {
        /// Account name.
        name: String,
    },
    /// Issue an API token for an account (any account may issue its own);
    /// printed once. Use it as TRUC_ADMIN_TOKEN.
    Token {
        /// Account name.
        name: String,
        /// What it is for, shown in `truc account list`.
        #[arg(long, default_value = "")]
        label: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show which account the configured token acts as.
    Whoami {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not admin, operator, auditor or agency"))
}

/// One line of standard input, without its line end.
fn read_password() -> Result<String, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (shown as typed): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::new(1, format!("reading the password: {e}")))?;
    let pw = line.trim_end_matches(['\n', '\r']).to_owned();
    if pw.is_empty() {
        return Err(CliError::new(2, "no password on standard input"));
    }
    Ok(pw)
}

/// Runs `truc account …`.
pub async fn run(cfg: &Config, c: AccountCmd) -> Result<(), CliError> {
    let admin = Admin::new(cfg)?;
    match c {
        AccountCmd::Add {
            name,
            role,
            agency,
            json,
        } => {
            let password = read_password()?;
            let a = admin
                .add_account(&AddAccount {
                    name,
                    role,
                    agency,
                    password,
                })
                .await?;
            if json {
                print_json(&a);
            } else {
                println!("account {} added (role {})", a.name, a.role);
            }
        }
        AccountCmd::List { json } => {
            let list = admin.accounts().await?;
            if json {
                print_json(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        a.role.to_string(),
                        opt(&a.agency),
                        if a.enabled { "yes" } else { "no" }.into(),
                        a.tokens.len().to_string(),
                        a.password_set.clone(),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME",
                    "ROLE",
                    "AGENCY",
                    "ENABLED",
                    "TOKENS",
                    "PASSWORD SET",
                ],
                &rows,
            );
        }
        AccountCmd::Disable { name } => {
            admin.set_account_enabled(&name, false).await?;
            println!("account {name} disabled; its tokens are revoked");
        }
        AccountCmd::Enable { name } => {
            admin.set_account_enabled(&name, true).await?;
            println!("account {name} enabled");
        }
        AccountCmd::Passwd { name } => {
            let password = read_password()?;
            admin
                .set_account_password(&name, &SetPassword { password })
                .await?;
            println!("password of {name} set");
        }
        AccountCmd::Token { name, label, json } => {
            let t = admin.issue_token(&name, &IssueToken { label }).await?;
            if json {
                print_json(&t);
            } else {
                println!("{}", t.token);
            }
        }
        AccountCmd::Whoami { json } => {
            let w = admin.whoami().await?;
            if json {
                print_json(&w);
            } else {
                println!(
                    "{} (role {}{})",
                    w.account,
                    w.role,
                    w.agency
                        .map(|a| format!(", agency {a}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}
