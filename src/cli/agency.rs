//! `truc agency …`: register, list, show, disable, enable, rotate-key,
//! rotate-broker-password, remove, import and rabbitmq-definitions, over the
//! typed admin client.
//!
//! Invariants: a secret or broker password is printed only by `add`,
//! `rotate-key`, `rotate-broker-password` and `import`, once;
//! `rabbitmq-definitions` prints importable JSON on stdout and every agency
//! it left out on stderr; `remove` without `--yes` says what it would do and
//! changes nothing (exit 2); an import file is validated in full (and
//! against the registered codes) before anything is sent.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};

use crate::api::types::{AddAgency, AgencyView, Import, ImportRow, RemoveQuery, Rotate};
use crate::cli::admin::Admin;
use crate::cli::{duration, opt, parse_code, print_json, refuse_without_yes, table, CliError};
use crate::core::config::Config;

/// `truc agency …`
#[derive(Debug, Subcommand)]
pub enum AgencyCmd {
    /// Register an agency; prints its access key, secret and broker
    /// password once.
    Add {
        /// Agency code (QCVN 102), e.g. 000.00.31.H41.
        code: String,
        /// Agency name.
        #[arg(long)]
        name: String,
        /// PEM RSA public key file, for rsa-sha256 signatures.
        #[arg(long)]
        public_key: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List agencies.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one agency.
    Show {
        /// Agency code.
        code: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disable an agency: its messages are refused (forbidden) and it
    /// receives nothing new (destination-disabled).
    Disable {
        /// Agency code.
        code: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enable a disabled agency.
    Enable {
        /// Agency code.
        code: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new access key; older keys stay valid for the grace period.
    /// Prints the new secret once.
    RotateKey {
        /// Agency code.
        code: String,
        /// How long the older keys stay valid (e.g. 7d, 12h, 0s).
        #[arg(long, default_value = "7d")]
        grace: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a new password for the agency's RabbitMQ user; prints it once.
    /// It takes effect when the definitions are exported and imported again.
    RotateBrokerPassword {
        /// Agency code.
        code: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an agency and delete its queues (needs --yes; refused while
    /// its inbox holds messages unless --force).
    Remove {
        /// Agency code.
        code: String,
        /// Really remove.
        #[arg(long)]
        yes: bool,
        /// Remove even with messages waiting in the inbox (they are lost).
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Register agencies from a CSV file with columns code,name (optional
    /// header line); every row is checked first and any bad row refuses the
    /// whole file. Prints the issued keys and broker passwords once.
    Import {
        /// The CSV file.
        file: PathBuf,
        /// Output format of the issued keys.
        #[arg(long, value_enum, default_value_t = OutFormat::Csv)]
        format: OutFormat,
        /// Print JSON (same as --format json).
        #[arg(long)]
        json: bool,
    },
    /// Print RabbitMQ definitions (users with their password hashes,
    /// permissions, topic permissions) confining each agency to its own
    /// routing keys and queues, for `rabbitmqctl import_definitions`.
    /// Agencies without a broker password are left out (listed on stderr).
    RabbitmqDefinitions {
        /// Print JSON (the only format; accepted for symmetry).
        #[arg(long)]
        json: bool,
    },
}

/// Output format of `agency import`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    /// CSV: code,name,access_key,secret,broker_user,broker_password.
    Csv,
    /// JSON array.
    Json,
}

/// Parses a CSV line into fields (RFC 4180 quoting, one line).
pub fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => quoted = false,
                other => cur.push(other),
            }
        } else {
            match c {
                '"' if cur.trim().is_empty() && !was_quoted => {
                    cur.clear();
                    quoted = true;
                    was_quoted = true;
                }
                '"' => return Err("a quote inside an unquoted field".into()),
                ',' => {
                    out.push(std::mem::take(&mut cur));
                    was_quoted = false;
                }
                other if was_quoted && !other.is_whitespace() => {
                    return Err("text after a closing quote".into())
                }
                other => cur.push(other),
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    out.push(cur);
    Ok(out.into_iter().map(|f| f.trim().to_owned()).collect())
}

/// One parsed import row with its file line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRow {
    /// 1-based line in the file.
    pub line: usize,
    /// Code.
    pub code: String,
    /// Name.
    pub name: String,
}

/// Parses and checks an import file: columns `code,name`, an optional
/// header line, blank lines and `#` comments skipped. The first problem is
/// returned as `line N: problem`; nothing is returned unless every row is good.
pub fn parse_import(text: &str) -> Result<Vec<CsvRow>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r');
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let f = csv_fields(l).map_err(|e| format!("line {line}: {e}"))?;
        if rows.is_empty()
            && seen.is_empty()
            && f.len() == 2
            && f[0].eq_ignore_ascii_case("code")
            && f[1].eq_ignore_ascii_case("name")
        {
            seen.insert(String::new(), 0);
            continue;
        }
        if f.len() != 2 {
            return Err(format!(
                "line {line}: expected 2 columns (code,name), found {}",
                f.len()
            ));
        }
        let code = crate::core::code::AgencyCode::parse(&f[0])
            .map_err(|e| format!("line {line}: code {:?}: {e}", f[0]))?;
        let name = &f[1];
        if name.is_empty() || name.chars().count() > 300 || name.chars().any(char::is_control) {
            return Err(format!(
                "line {line}: name must be 1-300 characters without control characters"
            ));
        }
        if let Some(first) = seen.insert(code.to_string(), line) {
            return Err(format!(
                "line {line}: code {code} already appears on line {first}"
            ));
        }
        rows.push(CsvRow {
            line,
            code: code.to_string(),
            name: name.clone(),
        });
    }
    if rows.is_empty() {
        return Err("the file holds no rows".into());
    }
    Ok(rows)
}

/// A CSV cell, quoted when needed.
pub(crate) fn csv_cell(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

fn state(a: &AgencyView) -> &'static str {
    if a.enabled {
        "enabled"
    } else {
        "disabled"
    }
}

/// Runs `truc agency …`.
pub async fn run(cfg: &Config, cmd: AgencyCmd) -> Result<(), CliError> {
    let admin = Admin::new(cfg)?;
    match cmd {
        AgencyCmd::Add {
            code,
            name,
            public_key,
            json,
        } => {
            let code = parse_code(&code)?;
            let public_key_pem = match public_key {
                None => None,
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .map_err(|e| CliError::new(2, format!("{}: {e}", p.display())))?,
                ),
            };
            let added = admin
                .add_agency(&AddAgency {
                    code: code.to_string(),
                    name,
                    public_key_pem,
                })
                .await?;
            if json {
                print_json(&added);
            } else {
                println!("registered {} ({})", added.issued.code, added.issued.name);
                println!("access key: {}", added.issued.access_key);
                println!("secret:     {}", added.issued.secret);
                println!("broker user:     {}", added.issued.broker_user);
                println!("broker password: {}", added.issued.broker_password);
                println!("inbox:      {}", added.inbox);
                println!("notify:     {}", added.notify);
                println!(
                    "The secret and broker password are shown only now: hand them to the agency over a safe channel."
                );
                println!("Export and import the RabbitMQ definitions so its broker user exists.");
            }
            Ok(())
        }
        AgencyCmd::List { json } => {
            let list = admin.agencies().await?;
            if json {
                print_json(&list);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|a| {
                    let keys: Vec<&str> = a
                        .access_keys
                        .iter()
                        .map(|k| k.access_key.as_str())
                        .collect();
                    vec![
                        a.code.clone(),
                        a.name.clone(),
                        state(a).into(),
                        keys.join(","),
                        a.created_at.clone(),
                    ]
                })
                .collect();
            table(
                &["CODE", "NAME", "STATE", "ACCESS KEYS", "REGISTERED"],
                &rows,
            );
            Ok(())
        }
        AgencyCmd::Show { code, json } => {
            let a = admin.agency(&parse_code(&code)?).await?;
            if json {
                print_json(&a);
                return Ok(());
            }
            for (label, value) in [
                ("code", a.code.clone()),
                ("name", a.name.clone()),
                ("enabled", a.enabled.to_string()),
                ("registered", a.created_at.clone()),
                ("rsa key", a.rsa_public_key.to_string()),
                ("inbox", a.inbox.clone()),
                ("inbox depth", opt(&a.inbox_messages)),
                ("consumers", opt(&a.inbox_consumers)),
                ("notify", a.notify.clone()),
            ] {
                println!("{label:<12} {value}");
            }
            for key in &a.access_keys {
                let mut notes = String::new();
                if key.last_used {
                    notes.push_str(", last used by the agency");
                }
                if key.hub_signs {
                    notes.push_str(", the hub signs with it");
                }
                println!(
                    "{:<12} {} (issued {}, expires {}{notes})",
                    "access key",
                    key.access_key,
                    key.created_at,
                    opt(&key.expires_at)
                );
            }
            Ok(())
        }
        AgencyCmd::Disable { code, json } => set_enabled(&admin, &code, false, json).await,
        AgencyCmd::Enable { code, json } => set_enabled(&admin, &code, true, json).await,
        AgencyCmd::RotateKey { code, grace, json } => {
            let code = parse_code(&code)?;
            let grace = duration("--grace", &grace)?;
            let r = admin
                .rotate_key(
                    &code,
                    &Rotate {
                        grace_s: grace.as_secs(),
                    },
                )
                .await?;
            if json {
                print_json(&r);
                return Ok(());
            }
            println!("new key for {} ({})", r.code, r.name);
            println!("access key: {}", r.access_key);
            println!("secret:     {}", r.secret);
            for k in &r.old_keys {
                println!(
                    "old key {} stays valid until {}",
                    k.access_key,
                    opt(&k.expires_at)
                );
            }
            if !r.hub_signs_with.is_empty() && r.hub_signs_with != r.access_key {
                println!(
                    "The hub signs what it sends {} with {} (the key it last used) until it sends with the new key or that key expires; adapters verify with the key named in lgsp-hub-key (keep the old one in previous_keys).",
                    r.code, r.hub_signs_with
                );
            }
            println!("The secret is shown only now: hand it to the agency over a safe channel.");
            Ok(())
        }
        AgencyCmd::RotateBrokerPassword { code, json } => {
            let r = admin.rotate_broker_password(&parse_code(&code)?).await?;
            if json {
                print_json(&r);
                return Ok(());
            }
            println!("new broker password for {}", r.code);
            println!("broker user:     {}", r.broker_user);
            println!("broker password: {}", r.broker_password);
            println!("The password is shown only now: hand it to the agency over a safe channel.");
            println!(
                "It takes effect when the RabbitMQ definitions are exported and imported again."
            );
            Ok(())
        }
        AgencyCmd::Remove {
            code,
            yes,
            force,
            json,
        } => {
            let code = parse_code(&code)?;
            if !yes {
                let a = admin.agency(&code).await?;
                return Err(refuse_without_yes(format!(
                    "would remove agency {code} ({}), revoke its {} access key(s) and delete queues {} ({} messages waiting) and {}{}",
                    a.name,
                    a.access_keys.len(),
                    a.inbox,
                    opt(&a.inbox_messages),
                    a.notify,
                    if force { "; --force: waiting messages would be lost" } else { "" }
                )));
            }
            let r = admin.remove_agency(&code, &RemoveQuery { force }).await?;
            if json {
                print_json(&r);
            } else {
                println!("removed {} ({})", r.code, r.name);
                for q in &r.deleted_queues {
                    println!("deleted queue {} ({} messages)", q.queue, q.messages);
                }
            }
            Ok(())
        }
        AgencyCmd::Import { file, format, json } => {
            let format = if json { OutFormat::Json } else { format };
            import(&admin, &file, format).await
        }
        AgencyCmd::RabbitmqDefinitions { json: _ } => {
            let d = admin.definitions().await?;
            print_json(&d);
            for w in &d.warnings {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
    }
}

async fn set_enabled(admin: &Admin, code: &str, enabled: bool, json: bool) -> Result<(), CliError> {
    let a = admin.set_enabled(&parse_code(code)?, enabled).await?;
    if json {
        print_json(&a);
    } else {
        println!("{} {}", a.code, state(&a));
    }
    Ok(())
}

async fn import(admin: &Admin, file: &PathBuf, format: OutFormat) -> Result<(), CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::new(2, format!("{}: {e}", file.display())))?;
    let rows = parse_import(&text)
        .map_err(|e| CliError::new(3, format!("{}: {e}; nothing imported", file.display())))?;
    let existing = admin.agencies().await?;
    for r in &rows {
        if existing.iter().any(|a| a.code == r.code) {
            return Err(CliError::new(
                3,
                format!(
                    "{}: line {}: agency {} is already registered; nothing imported",
                    file.display(),
                    r.line,
                    r.code
                ),
            ));
        }
    }
    let body = Import {
        rows: rows
            .iter()
            .map(|r| ImportRow {
                code: r.code.clone(),
                name: r.name.clone(),
            })
            .collect(),
    };
    let issued = admin.import(&body).await.map_err(|mut e| {
        // The hub names rows; the operator wants file lines.
        if let Some(rest) = e.message.strip_prefix("row ") {
            if let Some((n, tail)) = rest.split_once(':') {
                if let Some(r) = n.parse::<usize>().ok().and_then(|n| rows.get(n - 1)) {
                    e.message = format!(
                        "{}: line {}:{tail}; nothing imported",
                        file.display(),
                        r.line
                    );
                }
            }
        }
        e
    })?;
    match format {
        OutFormat::Json => print_json(&issued),
        OutFormat::Csv => {
            println!("code,name,access_key,secret,broker_user,broker_password");
            for i in &issued {
                println!(
                    "{},{},{},{},{},{}",
                    csv_cell(i.code.as_str()),
                    csv_cell(&i.name),
                    csv_cell(&i.access_key),
                    csv_cell(&i.secret),
                    csv_cell(&i.broker_user),
                    csv_cell(&i.broker_password)
                );
            }
        }
    }
    eprintln!(
        "imported {} agencies; the secrets and broker passwords are shown only now",
        issued.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_follow_rfc4180_on_one_line() {
        assert_eq!(csv_fields("a,b").unwrap(), vec!["a", "b"]);
        assert_eq!(
            csv_fields("H37.DN.001,\"Sở Y tế, tỉnh \"\"Đồng Nai\"\"\"").unwrap(),
            vec!["H37.DN.001", "Sở Y tế, tỉnh \"Đồng Nai\""]
        );
        assert_eq!(csv_fields(" a , b ").unwrap(), vec!["a", "b"]);
        assert!(csv_fields("a,\"b").is_err());
        assert!(csv_fields("a,b\"c").is_err());
        assert!(csv_fields("a,\"b\"c").is_err());
    }

    #[test]
    fn import_is_checked_in_full_with_line_numbers() {
        let ok = "\u{feff}code,name\n# comment\n\nH37.DN.001,Sở Y tế\r\nH37.DN.002,\"UBND xã A, huyện B\"\n";
        let rows = parse_import(ok).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].line, 4);
        assert_eq!(rows[1].name, "UBND xã A, huyện B");
        let e = parse_import("H1,A\nbad code,B\n").unwrap_err();
        assert!(e.starts_with("line 2: code"), "{e}");
        let e = parse_import("H1,A\nH2\n").unwrap_err();
        assert!(e.starts_with("line 2: expected 2 columns"), "{e}");
        let e = parse_import("H1,A\nH2,\n").unwrap_err();
        assert!(e.starts_with("line 2: name"), "{e}");
        let e = parse_import("H1,A\nH2,B\nH1,C\n").unwrap_err();
        assert_eq!(e, "line 3: code H1 already appears on line 1");
        assert!(parse_import("code,name\n").is_err());
    }
}
