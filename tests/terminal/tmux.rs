//! Persistent sessions through tmux, on a tmux socket private to each test: state survives a
//! reconnect, an operator's session of the same name is never attached, and the reaper ends
//! expired detached sessions. Without tmux these tests are skipped, except under `CI=true`,
//! where a missing tmux fails them.

use std::process::Command;
use std::time::Duration;

use citadel::terminal::TmuxMode;

use super::Service;

/// A tmux server of its own for one test, killed at the end.
struct Socket(String);

impl Socket {
    fn new() -> Option<Self> {
        if citadel::terminal::tmux::find().is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "tmux is required under CI=true (apt-get install -y tmux)"
            );
            eprintln!("skipped: tmux is not installed");
            return None;
        }
        Some(Self(format!(
            "citadel-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        )))
    }

    fn tmux(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .args(args)
            .output()
            .unwrap()
    }

    fn sessions(&self) -> Vec<String> {
        let out = self.tmux(&["list-sessions", "-F", "#{session_name}"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

async fn service(
    socket: &Socket,
    tweak: impl FnOnce(&mut citadel::terminal::TerminalConfig),
) -> Service {
    let name = socket.0.clone();
    Service::start(move |c| {
        c.tmux = TmuxMode::Required;
        c.tmux_socket = name;
        tweak(c);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_a_reconnect() {
    let Some(socket) = Socket::new() else { return };
    let svc = service(&socket, |_| {}).await;
    let dir = svc.dir.path().to_path_buf();
    let mut c = svc.connect().await;
    c.run_to_file(&dir, "export KEPT=still-here").await;
    drop(c);
    let mut c = svc.connect().await;
    assert_eq!(c.run_to_file(&dir, "echo $KEPT").await, "still-here");
    assert_eq!(socket.sessions(), ["citadel-alice"]);
    let mark = socket.tmux(&["show-options", "-qv", "-t", "=citadel-alice:", "@citadel"]);
    assert_eq!(String::from_utf8_lossy(&mark.stdout).trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_session_of_the_same_name_is_never_attached() {
    let Some(socket) = Socket::new() else { return };
    let made = socket.tmux(&["new", "-d", "-s", "citadel-alice", "-x", "80", "-y", "24"]);
    assert!(made.status.success(), "{made:?}");
    socket.tmux(&["set-environment", "-t", "=citadel-alice", "OPERATOR", "yes"]);
    let _ = socket.tmux(&[
        "send-keys",
        "-t",
        "=citadel-alice",
        "export OPERATOR_SECRET=leaked",
        "Enter",
    ]);
    let svc = service(&socket, |_| {}).await;
    let dir = svc.dir.path().to_path_buf();
    let mut c = svc.connect().await;
    assert_eq!(c.run_to_file(&dir, "echo x${OPERATOR_SECRET}x").await, "xx");
    assert_eq!(
        c.run_to_file(&dir, "tmux display-message -p '#S'").await,
        "citadel-alice-2"
    );
    let mut names = socket.sessions();
    names.sort();
    assert_eq!(names, ["citadel-alice", "citadel-alice-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_ends_expired_detached_sessions_only() {
    let Some(socket) = Socket::new() else { return };
    let svc = service(&socket, |c| {
        c.session_ttl = Duration::from_secs(1);
        c.reap_every = Duration::from_millis(200);
    })
    .await;
    let made = socket.tmux(&["new", "-d", "-s", "ops", "-x", "80", "-y", "24"]);
    assert!(made.status.success());
    let dir = svc.dir.path().to_path_buf();
    let mut c = svc.connect().await;
    c.run_to_file(&dir, "echo attached").await;
    // Attached for longer than the TTL: kept.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(socket.sessions().contains(&"citadel-alice".to_string()));
    drop(c);
    super::super::support::plane::eventually(Duration::from_secs(15), "the session reaped", || {
        !socket.sessions().contains(&"citadel-alice".to_string())
    });
    assert_eq!(
        socket.sessions(),
        ["ops"],
        "the operator's session is not citadel's to end"
    );
}
