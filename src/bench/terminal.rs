//! `citadel bench terminal`: the terminal service in this process on loopback, driven by a real
//! WebSocket client: the keystroke round trip (an `input` frame of one key → the `output` frame
//! that echoes it) as percentiles, and output throughput (MB/s of shell output arriving as
//! `output` frames). Bare shells (no tmux); the token list is fixed in memory, since the token
//! cache is not what is measured. It measures and prints; it asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use super::percentile;
use crate::terminal::auth::{
    token_hash, FetchError, FetchHashes, RefreshPolicy, TokenCache, TokenRecord,
};
use crate::terminal::frames::Frame;
use crate::terminal::{TerminalConfig, TmuxMode};

#[derive(Debug, Args)]
pub struct TerminalBench {
    /// Keystrokes timed.
    #[arg(long, default_value_t = 2000)]
    keys: usize,
    /// Bytes of shell output for the throughput figure.
    #[arg(long, default_value_t = 200_000_000)]
    bytes: u64,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    keys: usize,
    keystroke_p50_us: f64,
    keystroke_p99_us: f64,
    output_bytes: u64,
    output_seconds: f64,
    output_mb_per_s: f64,
    /// The same output read straight from a PTY in this process, no WebSocket.
    pty_alone_mb_per_s: f64,
}

/// The fixed token list of the bench.
#[derive(Debug)]
struct Fixed(Vec<TokenRecord>);

#[async_trait::async_trait]
impl FetchHashes for Fixed {
    async fn fetch(&self) -> Result<Vec<TokenRecord>, FetchError> {
        Ok(self.0.clone())
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn run(args: TerminalBench) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let mut config = TerminalConfig::new("127.0.0.1:0".parse()?, "bench", dir.clone());
    config.tmux = TmuxMode::Off;
    let token = format!("bench-{}", fastrand::u64(..));
    let records = vec![TokenRecord {
        hash: token_hash(&token),
        user_id: "bench".into(),
        org_id: "bench".into(),
        expires_at: None,
    }];
    let cache = TokenCache::new("bench", Arc::new(Fixed(records)), RefreshPolicy::default());
    let running = crate::terminal::start(config, cache).await?;
    let url = format!("ws://{}/terminal?token={token}", running.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .context("connecting")?;
    // A plain shell without a prompt (bash may swallow what is typed while it execs: wait for
    // the new shell to answer), then `cat` under the kernel's echo (see `keystrokes`).
    send(&mut ws, &Frame::input(b"exec env PS1= /bin/sh\r")).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut ws, &Frame::input(b"echo RE''ADY\r")).await?;
    wait_for(&mut ws, b"READY", Duration::from_secs(10)).await?;
    let keys = keystrokes(&mut ws, args.keys).await?;
    let (seconds, got) = throughput(&mut ws, args.bytes).await?;
    running.stop().await;
    let (alone_s, alone_bytes) = pty_alone(&dir, args.bytes).await?;
    let _ = std::fs::remove_dir_all(&dir);
    let report = Report {
        keys: keys.len(),
        keystroke_p50_us: percentile(&keys, 0.5),
        keystroke_p99_us: percentile(&keys, 0.99),
        output_bytes: got,
        output_seconds: seconds,
        output_mb_per_s: got as f64 / seconds / 1e6,
        pty_alone_mb_per_s: alone_bytes as f64 / alone_s / 1e6,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("terminal service on loopback, one WebSocket client, bare /bin/sh");
        println!(
            "keystroke round trip ({} keys): p50 {:.0} µs, p99 {:.0} µs",
            report.keys, report.keystroke_p50_us, report.keystroke_p99_us
        );
        println!(
            "output: {} bytes in {:.2} s = {:.1} MB/s",
            report.output_bytes, report.output_seconds, report.output_mb_per_s
        );
        println!(
            "the same output read from a PTY in-process: {:.1} MB/s (the service delivers {:.0} % of it)",
            report.pty_alone_mb_per_s,
            100.0 * report.output_mb_per_s / report.pty_alone_mb_per_s
        );
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("citadel-bench-terminal-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn send(ws: &mut Ws, f: &Frame) -> anyhow::Result<()> {
    ws.send(Message::Text(f.to_text().into())).await?;
    Ok(())
}

/// Reads output frames until their bytes hold `needle` (any output when empty); returns the
/// output bytes seen.
async fn wait_for(ws: &mut Ws, needle: &[u8], within: Duration) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + within;
    let (mut seen, mut tail) = (0u64, Vec::<u8>::new());
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .context("no output in time")?
            .context("the socket ended")??;
        let Message::Text(t) = msg else { continue };
        let f: Frame = serde_json::from_str(t.as_str())?;
        let Some(bytes) = f.payload_bytes() else {
            continue;
        };
        seen += bytes.len() as u64;
        tail.extend(&bytes);
        if needle.is_empty() || tail.windows(needle.len()).any(|w| w == needle) {
            return Ok(seen);
        }
        let keep = tail.len().saturating_sub(needle.len());
        tail.drain(..keep);
    }
}

/// Each key sent alone, timed until its echo arrives; sorted microseconds.
async fn keystrokes(ws: &mut Ws, n: usize) -> anyhow::Result<Vec<f64>> {
    send(ws, &Frame::input(b"cat > /dev/null\r")).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(ws).await;
    let mut us = Vec::with_capacity(n);
    for i in 0..n {
        let key = [b"abcdefghijklmnopqrstuvwxyz"[i % 26]];
        let t = Instant::now();
        send(ws, &Frame::input(&key)).await?;
        wait_for(ws, &key, Duration::from_secs(10)).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        if i % 64 == 63 {
            // End the line so the kernel's line buffer never fills.
            send(ws, &Frame::input(b"\r")).await?;
            wait_for(ws, b"\n", Duration::from_secs(10)).await?;
        }
    }
    // Ctrl-D at the start of a line ends `cat`.
    send(ws, &Frame::input(b"\r\x04")).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(ws).await;
    us.sort_by(f64::total_cmp);
    Ok(us)
}

/// Drops whatever output is already waiting.
async fn drain(ws: &mut Ws) {
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        if !matches!(
            tokio::time::timeout(Duration::from_millis(50), ws.next()).await,
            Ok(Some(_))
        ) {
            return;
        }
    }
}

/// `bytes` of shell output, timed from the command to its end marker.
async fn throughput(ws: &mut Ws, bytes: u64) -> anyhow::Result<(f64, u64)> {
    send(ws, &Frame::input(b"stty -echo\r")).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drain(ws).await;
    let cmd = format!("head -c {bytes} /dev/zero | tr '\\000' a; echo; echo EN''D\r");
    let t = Instant::now();
    send(ws, &Frame::input(cmd.as_bytes())).await?;
    let got = wait_for(ws, b"END", Duration::from_secs(600)).await?;
    Ok((t.elapsed().as_secs_f64(), got))
}

/// The baseline: the same command's output read straight from a PTY (the service's own reader),
/// without frames or a socket.
async fn pty_alone(dir: &std::path::Path, bytes: u64) -> anyhow::Result<(f64, u64)> {
    use crate::terminal::pty::{scrubbed_env, Launch, Shell};
    let sh = std::path::Path::new("/bin/sh");
    let launch = Launch {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("head -c {bytes} /dev/zero | tr '\\000' a").into(),
        ],
        cwd: dir.to_path_buf(),
        env: scrubbed_env(dir, sh),
    };
    let t = Instant::now();
    let (shell, mut out) = Shell::spawn(&launch, 80, 24)?;
    let mut got = 0u64;
    while let Some(chunk) = out.recv().await {
        got += chunk.len() as u64;
    }
    let seconds = t.elapsed().as_secs_f64();
    tokio::task::spawn_blocking(move || shell.end()).await?;
    Ok((seconds, got))
}
