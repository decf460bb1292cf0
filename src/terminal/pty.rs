//! One shell on a pseudo-terminal: the command it runs (a login shell, or a tmux client)
//! started at the client's window size in the workspace with a scrubbed environment, its output
//! read in chunks of up to 4096 bytes on a thread of its own until EOF or EIO, its input written
//! on another, resizes applied through the PTY master, and its end: SIGHUP to the whole process
//! group, SIGKILL after a grace period, then the shell reaped, so nothing is left behind. This
//! module never decides who may open a shell.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use portable_pty::{Child, CommandBuilder, MasterPty, PtySize};
use tokio::sync::mpsc;

/// The most bytes one output frame carries.
pub const READ_CHUNK: usize = 4096;
/// How long the process group gets between SIGHUP and SIGKILL.
const HANGUP_GRACE: Duration = Duration::from_millis(500);

/// The environment a terminal's shell (or tmux) starts with: nothing of citadel's own.
pub fn scrubbed_env(home: &Path, shell: &Path) -> Vec<(String, OsString)> {
    let user = std::env::var_os("USER")
        .or_else(|| std::env::var_os("LOGNAME"))
        .unwrap_or_else(|| "citadel".into());
    let mut env = vec![
        ("HOME".to_string(), home.as_os_str().to_owned()),
        ("USER".to_string(), user),
        ("SHELL".to_string(), shell.as_os_str().to_owned()),
        (
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("TERM".to_string(), "xterm-256color".into()),
        (
            "LANG".to_string(),
            std::env::var_os("LANG").unwrap_or_else(|| "C.UTF-8".into()),
        ),
    ];
    // Where tmux keeps its sockets: not a secret, and tests point it at a private folder.
    if let Some(dir) = std::env::var_os("TMUX_TMPDIR") {
        env.push(("TMUX_TMPDIR".to_string(), dir));
    }
    env
}

/// The login shell: `$SHELL`, else /bin/bash, else /bin/sh.
pub fn login_shell() -> std::path::PathBuf {
    std::env::var_os("SHELL")
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_absolute() && p.exists())
        .or_else(|| Some(Path::new("/bin/bash").to_path_buf()).filter(|p| p.exists()))
        .unwrap_or_else(|| "/bin/sh".into())
}

/// What to run on the PTY.
#[derive(Debug, Clone)]
pub struct Launch {
    pub argv: Vec<OsString>,
    pub cwd: std::path::PathBuf,
    pub env: Vec<(String, OsString)>,
}

impl Launch {
    fn command(&self) -> CommandBuilder {
        let mut cmd = CommandBuilder::from_argv(self.argv.clone());
        cmd.env_clear();
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.cwd(&self.cwd);
        cmd
    }
}

/// A running shell on a PTY. Dropping it without [`Shell::end`] leaves the process running:
/// always end it.
pub struct Shell {
    /// Behind a mutex only so a `&Shell` may be held across awaits (the master is not `Sync`).
    master: std::sync::Mutex<Box<dyn MasterPty + Send>>,
    child: Box<dyn Child + Send + Sync>,
    pid: Option<u32>,
    input: mpsc::Sender<Vec<u8>>,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell").field("pid", &self.pid).finish()
    }
}

/// A PTY size from columns and rows.
fn size(cols: u16, rows: u16) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

impl Shell {
    /// Opens a PTY of `cols`×`rows`, starts `launch` on it and returns the shell with the channel
    /// its output arrives on (closed at EOF or EIO).
    pub fn spawn(
        launch: &Launch,
        cols: u16,
        rows: u16,
    ) -> anyhow::Result<(Self, mpsc::Receiver<Vec<u8>>)> {
        let pair = portable_pty::native_pty_system().openpty(size(cols, rows))?;
        let child = pair.slave.spawn_command(launch.command())?;
        // Only the child holds the slave now, so its end reads as EIO here.
        drop(pair.slave);
        let reader = pair.master.try_clone_reader()?;
        let writer = pair.master.take_writer()?;
        let (out_tx, out_rx) = mpsc::channel(64);
        std::thread::Builder::new()
            .name("terminal-read".into())
            .spawn(move || read_loop(reader, out_tx))?;
        let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
        std::thread::Builder::new()
            .name("terminal-write".into())
            .spawn(move || write_loop(writer, in_rx))?;
        let pid = child.process_id();
        let shell = Self {
            master: std::sync::Mutex::new(pair.master),
            child,
            pid,
            input: in_tx,
        };
        Ok((shell, out_rx))
    }

    /// The shell's process id (also its process group: it leads its own session).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Queues bytes for the shell's input (waits while the writer is behind).
    pub async fn write(&self, bytes: Vec<u8>) -> bool {
        self.input.send(bytes).await.is_ok()
    }

    /// Applies a new window size (the shell gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> anyhow::Result<()> {
        self.master
            .lock()
            .expect("pty master")
            .resize(size(cols, rows))
    }

    /// Ends the shell: SIGHUP to its process group and to every process of its session (a
    /// job-control shell puts each job in a group of its own), SIGKILL to what is left after a
    /// grace period, then reaps it. Blocking: call it off the async threads.
    pub fn end(mut self) {
        // The input closes last: portable-pty's writer sends EOF (`\n^D`) when dropped, which a
        // tmux client would pass on to the persistent shell, ending it.
        let input = self.input;
        let Some(pid) = self
            .pid
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            drop(input);
            return;
        };
        signal_session(pid, rustix::process::Signal::HUP);
        let deadline = std::time::Instant::now() + HANGUP_GRACE;
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) && session_members(pid).is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Whatever ignored the hangup (or the shell itself) goes now.
        signal_session(pid, rustix::process::Signal::KILL);
        let _ = self.child.wait();
        drop(input);
        drop(self.master);
    }
}

/// Sends `signal` to the process group `leader` leads and to every process of its session.
fn signal_session(leader: rustix::process::Pid, signal: rustix::process::Signal) {
    let _ = rustix::process::kill_process_group(leader, signal);
    for member in session_members(leader) {
        let _ = rustix::process::kill_process(member, signal);
    }
}

/// The live processes whose session is `leader`'s (from /proc; none where there is no /proc).
fn session_members(leader: rustix::process::Pid) -> Vec<rustix::process::Pid> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command name: state, ppid, pgrp, session.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, r)| r)
                .split_whitespace()
                .collect();
            fields.first() != Some(&"Z")
                && fields.get(3).and_then(|s| s.parse().ok()) == Some(leader.as_raw_nonzero().get())
        })
        .filter_map(rustix::process::Pid::from_raw)
        .collect()
}

fn read_loop(mut reader: Box<dyn Read + Send>, out: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match reader.read(&mut buf) {
            // EOF, or EIO once the last process holding the slave is gone: the end of output.
            Ok(0) => return,
            Ok(n) => {
                if out.blocking_send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn write_loop(mut writer: Box<dyn Write + Send>, mut input: mpsc::Receiver<Vec<u8>>) {
    while let Some(bytes) = input.blocking_recv() {
        if writer
            .write_all(&bytes)
            .and_then(|()| writer.flush())
            .is_err()
        {
            return;
        }
    }
}
