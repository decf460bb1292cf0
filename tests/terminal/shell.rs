//! One shell over the socket: typing, resizing, pings, bad frames, raw bytes, floods, idle
//! connections, and the process group's end when the socket closes.

use std::time::Duration;

use citadel::terminal::frames::Frame;
use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::Message;

use super::{alive, contains, Client, Service};

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_runs_in_the_shell() {
    let svc = Service::start(|_| {}).await;
    let mut c = svc.connect().await;
    c.type_line("echo $((40+2))").await;
    c.read_until(0, b"42", T).await;
    assert_eq!(
        c.run("pwd").await,
        svc.dir.path().join("workspace").display().to_string()
    );
    assert_eq!(c.run("env | grep -c '^CITADEL_' || true").await, "0");
    assert_eq!(c.run("echo $TERM").await, "xterm-256color");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_starts_at_the_requested_size_and_resizes() {
    let svc = Service::start(|_| {}).await;
    let mut c = svc.connect().await;
    assert_eq!(c.run("stty size").await, "24 80");
    c.send(&Frame::resize(132, 50)).await;
    assert_eq!(c.run("stty size").await, "50 132");
    let mut c = Client::connect(&svc.url("token=alice-token&cols=100&rows=30")).await;
    assert_eq!(c.run("stty size").await, "30 100");
}

/// The next frame that is not output.
async fn expect(c: &mut Client, kind: &str) -> Frame {
    loop {
        let f = c.next_frame(T).await.expect("socket open");
        if f.kind != "output" {
            assert_eq!(f.kind, kind, "{f:?}");
            return f;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_bad_frames_are_answered() {
    let svc = Service::start(|_| {}).await;
    let mut c = svc.connect().await;
    c.send(&Frame::ping()).await;
    expect(&mut c, "pong").await;
    c.ws.send(Message::Text(r#"{"type":"shutdown"}"#.into()))
        .await
        .unwrap();
    let f = expect(&mut c, "error").await;
    assert_eq!(f.error.as_deref(), Some("invalid message type"));
    c.ws.send(Message::Text(
        r#"{"type":"resize","cols":0,"rows":10}"#.into(),
    ))
    .await
    .unwrap();
    expect(&mut c, "error").await;
    // A WebSocket ping gets a WebSocket pong.
    c.ws.send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(T, async {
        use futures_util::StreamExt as _;
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Pong(p))) => return p,
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_arrives_byte_exact_across_read_boundaries() {
    let svc = Service::start(|_| {}).await;
    let mut want = vec![b'a'; 4095];
    want.extend("😀".as_bytes());
    want.extend(b"END");
    std::fs::write(svc.dir.path().join("workspace/bytes"), &want).unwrap();
    let mut c = svc.connect().await;
    c.type_line("stty -echo; cat bytes").await;
    c.read_until(0, b"END", T).await;
    assert!(
        contains(&c.output, &want),
        "the 4,095 a and the emoji arrived changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_socket_ends_the_process_group() {
    let svc = Service::start(|_| {}).await;
    let mut c = svc.connect().await;
    let shell: i32 = c.run("echo $$").await.parse().unwrap();
    // A child that ignores the hangup: only SIGKILL to the group ends it.
    let bg: i32 = c
        .run("(trap '' HUP; exec sleep 1000) & echo $!")
        .await
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(shell) && alive(bg));
    c.ws.close(None).await.unwrap();
    drop(c);
    super::super::support::plane::eventually(Duration::from_secs(10), "the group gone", || {
        !alive(shell) && !alive(bg)
    });
    // Reaped, not a zombie: the shell is this process's child, and its entry is gone.
    assert!(!std::path::Path::new(&format!("/proc/{shell}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed() {
    let svc = Service::start(|c| {
        c.idle_timeout = Duration::from_millis(800);
        c.idle_check = Duration::from_millis(100);
    })
    .await;
    let mut c = svc.connect().await;
    let shell: i32 = c.run("echo $$").await.parse().unwrap();
    let mut saw_error = false;
    while let Some(f) = c.next_frame(Duration::from_secs(10)).await {
        saw_error |= f.kind == "error" && f.error.as_deref() == Some("idle timeout");
    }
    assert!(saw_error, "no idle timeout error frame");
    super::super::support::plane::eventually(Duration::from_secs(10), "the shell gone", || {
        !alive(shell)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_with_resizes_and_pings_tears_down_cleanly() {
    let svc = Service::start(|_| {}).await;
    let mut c = svc.connect().await;
    let shell: i32 = c.run("echo $$").await.parse().unwrap();
    c.type_line("yes").await;
    let (mut tx, mut rx) = futures_util::StreamExt::split(c.ws);
    let reader = tokio::spawn(async move {
        use futures_util::StreamExt as _;
        let (mut bytes, mut pongs) = (0usize, 0usize);
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Text(t) = m {
                let f: Frame = serde_json::from_str(t.as_str()).unwrap();
                match f.kind.as_str() {
                    "output" => bytes += f.payload_bytes().unwrap().len(),
                    "pong" => pongs += 1,
                    _ => {}
                }
            }
        }
        (bytes, pongs)
    });
    for i in 0..500u16 {
        let f = if i % 2 == 0 {
            Frame::resize(40 + i % 100, 10 + i % 40)
        } else {
            Frame::ping()
        };
        tx.send(Message::Text(f.to_text().into())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.close().await.unwrap();
    let (bytes, pongs) = tokio::time::timeout(T, reader).await.unwrap().unwrap();
    assert!(
        bytes > 100_000,
        "the flood reached the client: {bytes} bytes"
    );
    assert_eq!(pongs, 250, "every ping answered while flooding");
    super::super::support::plane::eventually(Duration::from_secs(10), "the shell gone", || {
        !alive(shell)
    });
    // The service still serves.
    let mut c = svc.connect().await;
    assert_eq!(c.run("echo ok").await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_service_ends_its_shells_first() {
    let svc = Service::start(|_| {}).await;
    let mut c = svc.connect().await;
    let shell: i32 = c.run("echo $$").await.parse().unwrap();
    let bg: i32 = c
        .run("(trap '' HUP; exec sleep 1000) & echo $!")
        .await
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    svc.running.stop().await;
    assert!(!alive(shell) && !alive(bg), "a shell outlived the service");
}
