//! Persistent sessions through tmux, on a tmux server of citadel's own socket (`tmux -L`): one
//! session per user, named `citadel-<user id, sanitised>`, marked at creation with the user
//! option `@citadel 1`. Only a session with that mark is ever attached: an operator's own
//! session of the same name is left alone and the user gets the next free name
//! (`citadel-<user>-2` …). A reaper ends marked sessions nobody is attached to once their last
//! activity is older than the TTL. This module runs tmux commands; it never reads or writes a
//! terminal's bytes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::pty::Launch;

/// The user option that marks a session as citadel's.
pub const MARK: &str = "@citadel";
/// How many names a user may be given when operators' sessions hold the first ones.
const MAX_NAMES: usize = 9;

/// The tmux server citadel uses.
#[derive(Debug, Clone)]
pub struct Tmux {
    pub binary: PathBuf,
    /// The socket name (`tmux -L`), under `TMUX_TMPDIR`.
    pub socket: String,
    pub env: Vec<(String, OsString)>,
}

/// The session name of a user: `citadel-` and the id with anything but `[A-Za-z0-9_-]` as `_`.
pub fn session_name(user_id: &str) -> String {
    let clean: String = user_id
        .chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("citadel-{}", if clean.is_empty() { "_" } else { &clean })
}

/// Where tmux is installed, if it is.
pub fn find() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join("tmux"))
        .find(|p| p.is_file())
}

/// What a name is on the tmux server.
#[derive(Debug, PartialEq, Eq)]
enum NameState {
    Free,
    Ours,
    Foreign,
}

impl Tmux {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.env_clear();
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c.arg("-L").arg(&self.socket);
        c
    }

    fn run(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        self.command().args(args).output()
    }

    fn state(&self, name: &str) -> std::io::Result<NameState> {
        let target = format!("={name}");
        if !self.run(&["has-session", "-t", &target])?.status.success() {
            return Ok(NameState::Free);
        }
        // Options take a pane target: `=name:` is exactly that session.
        let out = self.run(&["show-options", "-qv", "-t", &format!("{target}:"), MARK])?;
        let mark = String::from_utf8_lossy(&out.stdout);
        Ok(if mark.trim() == "1" {
            NameState::Ours
        } else {
            NameState::Foreign
        })
    }

    /// The user's session, created (detached, marked, in `cwd`, running `shell -l`) when it does
    /// not exist; the launch attaches a tmux client to it.
    pub fn session_for(
        &self,
        user_id: &str,
        cwd: &Path,
        shell: &Path,
        cols: u16,
        rows: u16,
    ) -> anyhow::Result<Launch> {
        let base = session_name(user_id);
        for n in 1..=MAX_NAMES {
            let name = if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            };
            match self.state(&name)? {
                NameState::Foreign => {
                    tracing::warn!(session = %name, "a tmux session of that name is not citadel's: not attaching it");
                    continue;
                }
                NameState::Free => self.create(&name, cwd, shell, cols, rows)?,
                NameState::Ours => {}
            }
            return Ok(self.attach(&name, cwd));
        }
        anyhow::bail!(
            "every tmux session name for this user is taken by sessions citadel did not create"
        )
    }

    fn create(
        &self,
        name: &str,
        cwd: &Path,
        shell: &Path,
        cols: u16,
        rows: u16,
    ) -> anyhow::Result<()> {
        let (x, y) = (cols.to_string(), rows.to_string());
        let cwd = cwd.to_string_lossy();
        let shell = shell.to_string_lossy();
        let target = format!("={name}:");
        // One tmux invocation: the session never exists unmarked.
        let out = self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &x,
            "-y",
            &y,
            "-c",
            &cwd,
            &shell,
            "-l",
            ";",
            "set-option",
            "-t",
            &target,
            MARK,
            "1",
        ])?;
        if !out.status.success() {
            anyhow::bail!(
                "tmux new-session failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn attach(&self, name: &str, cwd: &Path) -> Launch {
        let mut argv: Vec<OsString> = vec![self.binary.clone().into()];
        for a in [
            "-L",
            &self.socket,
            "attach-session",
            "-t",
            &format!("={name}"),
        ] {
            argv.push(a.into());
        }
        Launch {
            argv,
            cwd: cwd.to_path_buf(),
            env: self.env.clone(),
        }
    }

    /// Ends the marked sessions nobody is attached to whose last activity is older than `ttl`
    /// at `now_unix` (seconds); returns their names.
    pub fn reap(&self, ttl: Duration, now_unix: u64) -> std::io::Result<Vec<String>> {
        let format =
            format!("#{{session_name}}\t#{{session_attached}}\t#{{session_activity}}\t#{{{MARK}}}");
        let out = self.run(&["list-sessions", "-F", &format])?;
        // No server (no session at all) is not an error.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut ended = Vec::new();
        for name in expired(&text, ttl, now_unix) {
            if self
                .run(&["kill-session", "-t", &format!("={name}")])?
                .status
                .success()
            {
                ended.push(name);
            }
        }
        Ok(ended)
    }
}

/// The sessions of a `list-sessions` listing (name, attached clients, last activity, mark) that
/// the reaper ends: marked, detached, idle for `ttl`.
fn expired(listing: &str, ttl: Duration, now_unix: u64) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let (name, attached, activity, mark) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let idle = now_unix.saturating_sub(activity.parse().ok()?);
            (mark == "1" && attached == "0" && idle >= ttl.as_secs()).then(|| name.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised() {
        assert_eq!(session_name("alice"), "citadel-alice");
        assert_eq!(session_name("a.b:c d/é"), "citadel-a_b_c_d__");
        assert_eq!(session_name(""), "citadel-_");
    }

    #[test]
    fn only_marked_detached_idle_sessions_expire() {
        let listing =
            "citadel-a\t0\t100\t1\ncitadel-b\t1\t100\t1\nops\t0\t100\t\ncitadel-c\t0\t990\t1\n";
        assert_eq!(
            expired(listing, Duration::from_secs(60), 1000),
            ["citadel-a"]
        );
    }
}
