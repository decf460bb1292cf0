//! `shell_command` (alias `SHELL_COMMAND`): runs `payload.command` with `/bin/sh -c` in the
//! node's workspace folder. It is remote code execution, so it is **off unless the node enables
//! it**, optionally limited by an allowlist and a passcode. The command runs in its own process
//! group with a scrubbed environment; cancellation or the deadline kills the whole group; output
//! (stdout and stderr, interleaved by line) is streamed as chunks and capped (default 1 MiB, the
//! result says `truncated`). This module must never run a command the policy does not allow.

use std::process::Stdio;

use async_trait::async_trait;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;

use super::{Handler, HandlerError, JobContext};

mod policy;

pub use policy::ShellPolicy;

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
        let mut child = self.spawn(command, ctx.job.id.as_str())?;
        let output = self.collect(&mut child, ctx).await?;
        let status = match output.status {
            Some(s) => s,
            None => child.wait().await,
        }
        .map_err(|e| {
            HandlerError::retryable(format!("shell_command: waiting for the command: {e}"))
        })?;
        outcome(status, output.text, output.truncated)
    }
}

/// What a command printed (up to the cap), and its exit status if it was seen while reading.
struct Output {
    text: String,
    truncated: bool,
    status: Option<std::io::Result<std::process::ExitStatus>>,
}

impl ShellHandler {
    /// Starts `/bin/sh -c command` in the workspace, in its own process group, with a scrubbed
    /// environment and both output pipes captured.
    fn spawn(&self, command: &str, job_id: &str) -> Result<tokio::process::Child, HandlerError> {
        tokio::process::Command::new("/bin/sh")
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
            .env("CITADEL_JOB_ID", job_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                HandlerError::retryable(format!("shell_command: cannot start /bin/sh: {e}"))
            })
    }

    /// Streams the command's lines as chunks (keeping at most `max_output` bytes) until both
    /// pipes close; kills the process group when the command exits or the job is cancelled.
    async fn collect(
        &self,
        child: &mut tokio::process::Child,
        ctx: &JobContext,
    ) -> Result<Output, HandlerError> {
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
        let mut out = Output {
            text: String::new(),
            truncated: false,
            status: None,
        };
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(line) => {
                        if out.text.len() + line.len() > self.policy.max_output {
                            out.truncated = true;
                            continue;
                        }
                        out.text.push_str(&line);
                        ctx.chunks.send(line).await;
                    }
                    None => break,
                },
                s = child.wait(), if out.status.is_none() => {
                    out.status = Some(s);
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
        Ok(out)
    }
}

/// The job's result: the output on success, else the exit status and the output's last lines.
fn outcome(
    status: std::process::ExitStatus,
    output: String,
    truncated: bool,
) -> Result<Value, HandlerError> {
    let code = status.code().unwrap_or(-1);
    if status.success() {
        return Ok(json!({"output": output, "exit_code": code, "truncated": truncated}));
    }
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
