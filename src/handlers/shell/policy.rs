//! What a node allows `shell_command` to run: whether it is enabled, the allowlist (a single
//! simple command whose first word is listed) and the passcode, compared in constant time.
//! Decides only; never runs anything.

use std::path::PathBuf;

use crate::handlers::HandlerError;

/// Characters that make a command more than one simple command; refused when an allowlist is set.
const SHELL_CONTROL: &[char] = &[';', '&', '|', '`', '$', '<', '>', '\n', '(', ')'];

/// What the node allows.
#[derive(Debug, Clone)]
pub struct ShellPolicy {
    pub enabled: bool,
    /// When not empty, the command's first word must be one of these, and the command must be a
    /// single simple command (no `;`, `&`, `|`, `$`, backquotes, redirections or subshells).
    pub allow: Vec<String>,
    /// When set, `payload.passcode` must equal it.
    pub passcode: Option<String>,
    /// The working directory of every command (created mode 0700).
    pub workspace: PathBuf,
    /// The most output bytes kept and streamed.
    pub max_output: usize,
}

impl Default for ShellPolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            allow: Vec::new(),
            passcode: None,
            workspace: std::env::temp_dir().join("citadel-workspace"),
            max_output: 1024 * 1024,
        }
    }
}

impl ShellPolicy {
    /// Whether `command` (with the payload's `passcode`) may run; the error says why not.
    pub fn check(&self, command: &str, passcode: Option<&str>) -> Result<(), HandlerError> {
        if !self.enabled {
            return Err(HandlerError::permanent(
                "shell_command is disabled on this node",
            ));
        }
        if let Some(expected) = &self.passcode {
            let given = passcode.unwrap_or("");
            // Compare without stopping early, so timing says nothing about the passcode.
            let same = given.len() == expected.len()
                && given
                    .bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if !same {
                return Err(HandlerError::permanent(
                    "shell_command: wrong or missing passcode",
                ));
            }
        }
        if !self.allow.is_empty() {
            let program = command.split_whitespace().next().unwrap_or("");
            if !self.allow.iter().any(|a| a == program) {
                return Err(HandlerError::permanent(format!(
                    "shell_command: `{program}` is not in this node's allowlist ({})",
                    self.allow.join(", ")
                )));
            }
            if command.contains(SHELL_CONTROL) {
                return Err(HandlerError::permanent(
                    "shell_command: with an allowlist, only a single simple command is allowed \
                     (no ; & | $ ` < > ( ) or newlines)",
                ));
            }
        }
        Ok(())
    }
}
