//! `shell_command` (alias `SHELL_COMMAND`): runs `payload.command` with `/bin/sh -c` in the
//! node's workspace folder. It is remote code execution, so it is **off unless the node enables
//! it**, optionally limited by an allowlist and a passcode. The command runs in its own process
//! group with a scrubbed environment; cancellation or the deadline kills the whole group; output
//! (stdout and stderr, interleaved by line) is streamed as chunks and capped (default 1 MiB, the
//! result says `truncated`). This module must never run a command the policy does not allow.

use std::path::PathBuf;
use std::process::Stdio;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use super::{Handler, HandlerError, JobContext};

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

#[derive(Debug)]
pub struct ShellHandler {
    policy: ShellPolicy,
}

impl ShellHandler {
    pub fn new(policy: ShellPolicy) -> Self {
        Self { policy }
    }
}

#[async_trait]
impl Handler for ShellHandler {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let command = ctx
            .job
            .payload
            .get("command")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                HandlerError::permanent("shell_command: payload.command (a string) is required")
            })?;
        self.policy.check(
            command,
            ctx.job.payload.get("passcode").and_then(Value::as_str),
        )?;
        create_workspace(&self.policy.workspace)?;

        let mut child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.policy.workspace)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", &self.policy.workspace)
            .env("LANG", "C.UTF-8")
            .env("CITADEL_JOB_ID", ctx.job.id.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                HandlerError::retryable(format!("shell_command: cannot start /bin/sh: {e}"))
            })?;
        let group = child
            .id()
            .and_then(|id| rustix::process::Pid::from_raw(id as i32));
        let kill_group = || {
            if let Some(pgid) = group {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
        };

        let (tx, mut lines) = mpsc::channel::<String>(256);
        let readers = [
            tokio::spawn(read_lines(child.stdout.take().expect("piped"), tx.clone())),
            tokio::spawn(read_lines(child.stderr.take().expect("piped"), tx)),
        ];
        let mut output = String::new();
        let mut truncated = false;
        let mut status = None;
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) => {
                        if output.len() + line.len() > self.policy.max_output {
                            truncated = true;
                            continue;
                        }
                        output.push_str(&line);
                        ctx.chunks.send(line).await;
                    }
                    None => break,
                },
                s = child.wait(), if status.is_none() => {
                    status = Some(s);
                    // Whatever the command left running in the background goes with it, so the
                    // pipes close and the job ends.
                    kill_group();
                }
                () = ctx.cancel.cancelled() => {
                    kill_group();
                    for r in &readers {
                        r.abort();
                    }
                    return Err(HandlerError::retryable("shell_command: cancelled; the process group was killed"));
                }
            }
        }
        let status = match status {
            Some(s) => s,
            None => child.wait().await,
        }
        .map_err(|e| {
            HandlerError::retryable(format!("shell_command: waiting for the command: {e}"))
        })?;
        let code = status.code().unwrap_or(-1);
        if status.success() {
            Ok(json!({"output": output, "exit_code": code, "truncated": truncated}))
        } else {
            let tail: String = output
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            Err(HandlerError::permanent(format!(
                "shell_command: exited with {}{}",
                if code >= 0 {
                    format!("status {code}")
                } else {
                    "a signal".into()
                },
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(": {tail}")
                }
            )))
        }
    }
}

async fn read_lines(stream: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx
                    .send(String::from_utf8_lossy(&buf).into_owned())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

fn create_workspace(dir: &std::path::Path) -> Result<(), HandlerError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            HandlerError::retryable(format!(
                "shell_command: cannot create workspace {}: {e}",
                dir.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::ctx;
    use super::*;

    fn policy(dir: &std::path::Path) -> ShellPolicy {
        ShellPolicy {
            enabled: true,
            workspace: dir.join("ws"),
            ..ShellPolicy::default()
        }
    }

    #[tokio::test]
    async fn runs_streams_and_scrubs_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let h = ShellHandler::new(policy(dir.path()));
        std::env::set_var("CITADEL_SECRET_TEST", "leak");
        let (c, mut rx) = ctx(
            "shell_command",
            json!({"command": "echo one; echo two >&2; echo ${CITADEL_SECRET_TEST:-clean}; pwd"}),
            1,
        );
        let out = h.run(&c).await.unwrap();
        let text = out["output"].as_str().unwrap();
        assert!(
            text.contains("one\n") && text.contains("two\n") && text.contains("clean\n"),
            "{text}"
        );
        assert!(text.contains("/ws\n"), "{text}");
        assert_eq!(out["exit_code"], 0);
        assert_eq!(out["truncated"], false);
        let mut chunks = Vec::new();
        while let Ok(c) = rx.try_recv() {
            chunks.push(c);
        }
        assert_eq!(chunks.len(), 4, "{chunks:?}");
    }

    #[tokio::test]
    async fn output_is_capped_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let h = ShellHandler::new(ShellPolicy {
            max_output: 100,
            ..policy(dir.path())
        });
        let (c, _rx) = ctx("shell_command", json!({"command": "seq 1 1000"}), 1);
        let out = h.run(&c).await.unwrap();
        assert!(out["output"].as_str().unwrap().len() <= 100);
        assert_eq!(out["truncated"], true);
    }

    #[tokio::test]
    async fn failure_and_policy_errors_are_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let h = ShellHandler::new(policy(dir.path()));
        let (c, _rx) = ctx("shell_command", json!({"command": "echo oops; exit 3"}), 1);
        let err = h.run(&c).await.unwrap_err();
        assert!(!err.retryable);
        assert!(
            err.message.contains("status 3") && err.message.contains("oops"),
            "{err}"
        );

        let strict = ShellPolicy {
            allow: vec!["echo".into()],
            passcode: Some("s3cret".into()),
            ..policy(dir.path())
        };
        assert!(strict.check("echo hi", Some("s3cret")).is_ok());
        assert!(strict
            .check("echo hi", Some("nope"))
            .unwrap_err()
            .message
            .contains("passcode"));
        assert!(strict
            .check("rm -rf /", Some("s3cret"))
            .unwrap_err()
            .message
            .contains("allowlist"));
        assert!(strict
            .check("echo hi; rm -rf /", Some("s3cret"))
            .unwrap_err()
            .message
            .contains("single simple"));
        assert!(ShellPolicy::default()
            .check("true", None)
            .unwrap_err()
            .message
            .contains("disabled"));
    }

    #[tokio::test]
    async fn cancellation_kills_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let h = ShellHandler::new(policy(dir.path()));
        let marker = dir.path().join("ws/child.pid");
        let (c, _rx) = ctx(
            "shell_command",
            json!({"command": format!("sleep 300 & echo $! > {}; wait", marker.display())}),
            1,
        );
        let cancel = c.cancel.clone();
        let run = tokio::spawn(async move { h.run(&c).await });
        let started = std::time::Instant::now();
        while !marker.exists() {
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
        let err = run.await.unwrap().unwrap_err();
        assert!(err.message.contains("cancelled"), "{err}");
        let pid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The background `sleep` (same process group) is gone too.
        let mut gone = false;
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the command's child {pid} survived cancellation");
    }
}
