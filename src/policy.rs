//! Delivery, permission and rate policies, read from `policies/*.toml`.
//!
//! Invariant: a [`Policies`] value is validated when built; an invalid file
//! stops start-up with the file, key and problem named.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::envelope::Priority;

/// The built-in policy file, used when no `policies/` directory is found.
pub const DEFAULT_POLICY: &str = include_str!("../policies/ingress.toml");

/// Policy errors.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file does not parse or has an unknown key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said (it names the key).
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {key}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

fn default_clock_skew() -> String {
    "300s".into()
}
fn default_max_body_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_priority() -> u8 {
    0
}

/// `[ingress]`: what the router checks on every message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressFile {
    /// Accepted difference between `lgsp-time` and the hub clock (`300s`).
    #[serde(default = "default_clock_skew")]
    pub clock_skew: String,
    /// Largest body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Priority of envelopes without `lgsp-priority`.
    #[serde(default = "default_priority")]
    pub default_priority: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    ingress: Option<IngressFile>,
}

/// Validated policies.
#[derive(Debug, Clone)]
pub struct Policies {
    /// Clock-skew window.
    pub clock_skew: Duration,
    /// Largest body.
    pub max_body_bytes: u64,
    /// Default priority.
    pub default_priority: Priority,
}

impl Policies {
    /// Parses one policy file's text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let ing = file.ingress.unwrap_or(IngressFile {
            clock_skew: default_clock_skew(),
            max_body_bytes: default_max_body_bytes(),
            default_priority: default_priority(),
        });
        let invalid = |key: &str, problem: String| PolicyError::Invalid {
            path: path.to_owned(),
            key: format!("ingress.{key}"),
            problem,
        };
        let clock_skew = crate::time::parse_duration(&ing.clock_skew)
            .map_err(|e| invalid("clock_skew", e.to_string()))?;
        if clock_skew < Duration::from_secs(1) || clock_skew > Duration::from_secs(3600) {
            return Err(invalid("clock_skew", "must be between 1s and 1h".into()));
        }
        if ing.max_body_bytes == 0 || ing.max_body_bytes > 128 * 1024 * 1024 {
            return Err(invalid(
                "max_body_bytes",
                "must be 1 to 134217728 (RabbitMQ's own ceiling)".into(),
            ));
        }
        let default_priority = Priority::new(ing.default_priority)
            .filter(|p| *p != Priority::FLASH_APPOINTED)
            .ok_or_else(|| invalid("default_priority", "must be 0-3".into()))?;
        Ok(Self {
            clock_skew,
            max_body_bytes: ing.max_body_bytes,
            default_priority,
        })
    }

    /// Loads `dir/ingress.toml`, or the built-in defaults when `dir` has none.
    pub fn load(dir: &Path) -> Result<Self, PolicyError> {
        let path = dir.join("ingress.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_toml(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Self::from_toml(DEFAULT_POLICY, Path::new("(built-in ingress.toml)"))
            }
            Err(source) => Err(PolicyError::Read { path, source }),
        }
    }
}

impl Default for Policies {
    fn default() -> Self {
        Self::from_toml(DEFAULT_POLICY, Path::new("(built-in ingress.toml)"))
            .expect("the built-in policy is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_is_valid_and_errors_name_file_and_key() {
        let p = Policies::default();
        assert_eq!(p.clock_skew, Duration::from_secs(300));
        let e = Policies::from_toml("[ingress]\nclock_skew = \"soon\"\n", Path::new("p.toml"))
            .unwrap_err();
        assert!(
            e.to_string().starts_with("p.toml: ingress.clock_skew:"),
            "{e}"
        );
        let e = Policies::from_toml("[ingress]\nmax_bodyy = 3\n", Path::new("p.toml")).unwrap_err();
        assert!(e.to_string().contains("max_bodyy"), "{e}");
        let e = Policies::from_toml("[ingress]\ndefault_priority = 4\n", Path::new("p.toml"))
            .unwrap_err();
        assert!(e.to_string().contains("default_priority"), "{e}");
    }
}
