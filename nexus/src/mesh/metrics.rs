//! The relay's counters (docs/mesh.md#relay): every frame a node sent, by what became of it, and
//! the forwarded ones by WireGuard message type, in the Prometheus text of `GET /metrics`. The
//! counts are the process's (one control plane per process). It only counts; it must never
//! decide what happens to a frame.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use citadel_transports::control_plane::mesh_wire::WgType;

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Forwarded(WgType),
    /// Its destination key belongs to another organization.
    Foreign,
    /// Not shaped like WireGuard (or too short to name a destination).
    NotWireguard,
    /// No live node of the organization holds the key and is connected.
    Offline,
    /// The destination's queue was full (a slow receiver): dropped, as UDP would.
    QueueFull,
}

static FORWARDED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static FOREIGN: AtomicU64 = AtomicU64::new(0);
static NOT_WIREGUARD: AtomicU64 = AtomicU64::new(0);
static OFFLINE: AtomicU64 = AtomicU64::new(0);
static QUEUE_FULL: AtomicU64 = AtomicU64::new(0);

fn slot(t: WgType) -> usize {
    WgType::ALL.iter().position(|x| *x == t).unwrap_or(0)
}

pub(crate) fn count(fate: Fate) {
    let c = match fate {
        Fate::Forwarded(t) => &FORWARDED[slot(t)],
        Fate::Foreign => &FOREIGN,
        Fate::NotWireguard => &NOT_WIREGUARD,
        Fate::Offline => &OFFLINE,
        Fate::QueueFull => &QUEUE_FULL,
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// The relay's counters in the Prometheus text format.
pub fn render() -> String {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let forwarded: u64 = FORWARDED.iter().map(get).sum();
    let mut out = String::new();
    let name = "citadel_mesh_relay_frames_total";
    let _ = writeln!(
        out,
        "# HELP {name} Relay frames from nodes, by what became of them.\n# TYPE {name} counter"
    );
    for (result, v) in [
        ("forwarded", forwarded),
        ("foreign", get(&FOREIGN)),
        ("not_wireguard", get(&NOT_WIREGUARD)),
        ("offline", get(&OFFLINE)),
        ("queue_full", get(&QUEUE_FULL)),
    ] {
        let _ = writeln!(out, "{name}{{result=\"{result}\"}} {v}");
    }
    let name = "citadel_mesh_relay_forwarded_total";
    let _ = writeln!(
        out,
        "# HELP {name} Relay frames forwarded, by WireGuard message type.\n# TYPE {name} counter"
    );
    for t in WgType::ALL {
        let _ = writeln!(
            out,
            "{name}{{type=\"{}\"}} {}",
            t.label(),
            get(&FORWARDED[slot(t)])
        );
    }
    out
}
