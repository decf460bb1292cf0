//! The console's node terminal in a real headless Chromium: an admin opens a real node's terminal
//! page from its node page, types a command into the xterm.js screen, and reads its output there
//! (plane → mesh → node and back); every wait is bounded (10 s) and a screenshot is saved in
//! `target/ui-shots/`.

use fantoccini::Locator;

use super::browser::{click, shot, sign_in, start_browser, text, until_text};
use crate::mesh_node::{mesh_ip, Node};
use crate::support::plane::Plane;

#[tokio::test(flavor = "multi_thread")]
async fn type_a_command_into_a_nodes_terminal_in_a_real_browser() {
    let Some((_driver, c)) = start_browser().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let node = Node::enrolled(&p, tmp.path(), "node-a", "acme");
    let w = node.work(&p, &[]);
    mesh_ip(&w, 0);
    sign_in(&c, &p).await;

    c.goto(&format!("{}/ui/nodes", p.url())).await.unwrap();
    until_text(&c, "#nodes", "the node reported", |t| t.contains("node-a")).await;
    click(&c, "#nodes a").await;
    click(&c, "#open-terminal").await;
    until_text(&c, "#terminal-status", "the terminal connected", |t| {
        t == "connected"
    })
    .await;
    let screen = c.find(Locator::Css(".xterm-helper-textarea")).await;
    let screen = screen.expect("the xterm screen");
    // Typing `echo $((6*7))`: the shell's answer, 42, is text the command line does not hold.
    screen
        .send_keys("echo $((6*7))_$((100+23))\n")
        .await
        .unwrap();
    until_text(
        &c,
        ".xterm-rows",
        "the command's output on the screen",
        |t| t.contains("42_123"),
    )
    .await;
    assert!(text(&c, "#terminal-status").await.contains("connected"));
    shot(&c, "terminal").await;
    c.close().await.unwrap();
}
