//! The mesh relay (docs/mesh.md#relay): `GET /api/fabric/mesh/relay`, one WebSocket per node.
//! A binary frame `[destination key | WireGuard datagram]` from a node goes out to the
//! destination's socket as `[source key | datagram]`, only when the datagram is shaped like
//! WireGuard and the destination is the current key of a live node of the sender's organization
//! with a socket open; everything else is dropped and counted ([`super::metrics`]). Each socket
//! has a bounded queue: a full one drops the datagram (UDP semantics), so a slow receiver never
//! holds up the relay or the sender. A node's newer socket replaces its older one; a revoked
//! node's socket is closed at once, and one whose credential was replaced (the node approved
//! again, perhaps into another organization) within a second. It never reads or keeps what the
//! datagrams carry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use citadel_transports::control_plane::mesh_wire::{encode_frame, split_frame, WgType, KEY_LEN};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::super::api::principal;
use super::super::auth::Principal;
use super::metrics::{count, Fate};
use super::MeshState;

/// Datagrams queued for one node's socket before new ones are dropped.
pub(crate) const QUEUE: usize = 256;

/// Where a frame's destination key stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dest {
    /// The organization it was registered in; `None`: never registered.
    pub org: Option<String>,
    /// The live node it is the current key of; `None`: replaced, or its node was revoked.
    pub node: Option<String>,
}

/// What to do with a frame from a node of `org`: forward it (its type) to the node named, or
/// drop it (why). Pure.
pub(crate) fn decide<'a>(
    org: &str,
    datagram: &[u8],
    dest: &'a Dest,
) -> Result<(WgType, &'a str), Fate> {
    let ty = WgType::of(datagram).ok_or(Fate::NotWireguard)?;
    match (&dest.org, &dest.node) {
        (Some(o), _) if o != org => Err(Fate::Foreign),
        (Some(_), Some(node)) => Ok((ty, node.as_str())),
        _ => Err(Fate::Offline),
    }
}

/// One node's open socket.
#[derive(Debug)]
struct Conn {
    id: u64,
    /// The organization it was opened for.
    org: String,
    queue: mpsc::Sender<Bytes>,
}

/// The open sockets, by node id.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    conns: RwLock<HashMap<String, Conn>>,
    next: AtomicU64,
}

impl Hub {
    /// Registers a node's socket (replacing an older one, whose queue then ends); its id.
    pub(super) fn attach(&self, node: &str, org: &str, tx: mpsc::Sender<Bytes>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.conns.write().unwrap_or_else(PoisonError::into_inner);
        let org = org.to_string();
        conns.insert(node.to_string(), Conn { id, org, queue: tx });
        id
    }

    /// Forgets a node's socket, unless a newer one replaced it.
    fn detach(&self, node: &str, id: u64) {
        let mut conns = self.conns.write().unwrap_or_else(PoisonError::into_inner);
        if conns.get(node).is_some_and(|c| c.id == id) {
            conns.remove(node);
        }
    }

    /// Queues a frame for a node's socket opened for `org`, without waiting.
    fn offer(&self, node: &str, org: &str, frame: Bytes) -> Result<(), Fate> {
        let conns = self.conns.read().unwrap_or_else(PoisonError::into_inner);
        let conn = conns.get(node).filter(|c| c.org == org);
        match conn.map(|c| c.queue.try_send(frame)) {
            Some(Ok(())) => Ok(()),
            Some(Err(TrySendError::Full(_))) => Err(Fate::QueueFull),
            None | Some(Err(TrySendError::Closed(_))) => Err(Fate::Offline),
        }
    }
}

/// Where a destination key stands.
fn dest_of(s: &MeshState, key: &[u8; KEY_LEN]) -> Dest {
    Dest {
        org: s.registry.org_of(key),
        node: s
            .registry
            .holder(key)
            .map(|(node, _)| node)
            .filter(|n| super::member::is_member(n) || s.app.credentials.is_live(n)),
    }
}

/// Routes one frame from `node` of `org`; what became of it.
pub(super) fn route(s: &MeshState, node: &str, org: &str, frame: &[u8]) -> Fate {
    let Some((key, datagram)) = split_frame(frame) else {
        return Fate::NotWireguard;
    };
    let dest = dest_of(s, &key);
    let (ty, to) = match decide(org, datagram, &dest) {
        Ok(d) => d,
        Err(f) => return f,
    };
    let Some(src) = s.registry.key_of(node) else {
        return Fate::Offline;
    };
    let out = Bytes::from(encode_frame(&src.0, datagram));
    match s.hub.offer(to, org, out) {
        Ok(()) => Fate::Forwarded(ty),
        Err(f) => f,
    }
}

/// How often a socket checks that its credential still stands for the node and organization it
/// was opened for (a revocation is seen at once; a node approved again gets a new credential).
const RECHECK: Duration = Duration::from_secs(1);

/// Serves the socket of `who` (opened with `token`) until it closes, is replaced, or the token
/// no longer stands for `who`.
pub(crate) async fn session(
    s: Arc<MeshState>,
    who: Principal,
    token: String,
    mut socket: WebSocket,
) {
    let (node, org) = (
        who.node_id().unwrap_or_default().to_string(),
        who.org.clone(),
    );
    let (tx, mut queued) = mpsc::channel::<Bytes>(QUEUE);
    let id = s.hub.attach(&node, &org, tx);
    let mut revoked = s.app.credentials.subscribe_revocations();
    // A revocation between the request's check and this subscription is not missed.
    revoked.mark_changed();
    let mut recheck = tokio::time::interval(RECHECK);
    tracing::info!(node_id = %node, %org, "mesh relay connected");
    let close = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    let why = loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                None => break "closed",
                Some(Err(_)) => break "read error",
                Some(Ok(Message::Binary(frame))) => {
                    let fate = route(&s, &node, &org, &frame);
                    if !matches!(fate, Fate::Forwarded(_)) {
                        tracing::trace!(node_id = %node, ?fate, "relay frame dropped");
                    }
                    count(fate);
                }
                Some(Ok(Message::Close(_))) => break "closed by the node",
                Some(Ok(_)) => {} // text is not part of the protocol; pings are answered
            },
            out = queued.recv() => match out {
                Some(frame) => {
                    if socket.send(Message::Binary(frame)).await.is_err() {
                        break "write error";
                    }
                }
                None => {
                    let _ = socket.send(close(1000, "replaced by a newer relay connection")).await;
                    break "replaced by a newer connection";
                }
            },
            _ = async { tokio::select! { _ = revoked.changed() => {}, _ = recheck.tick() => {} } } => {
                if principal(&s.app, &token).as_ref() != Some(&who) {
                    let _ = socket.send(close(1008, "this node's credential was revoked or replaced")).await;
                    break "revoked or replaced";
                }
            }
        }
    };
    s.hub.detach(&node, id);
    tracing::info!(node_id = %node, reason = why, "mesh relay closed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wg(ty: u8) -> Vec<u8> {
        let len = [148, 92, 64, 100][usize::from(ty - 1)];
        let mut d = vec![0xAB; len];
        d[..4].copy_from_slice(&[ty, 0, 0, 0]);
        d
    }

    #[test]
    fn frames_go_only_to_a_live_holder_in_the_same_organization() {
        let here = |node: Option<&str>| Dest {
            org: Some("acme".into()),
            node: node.map(str::to_string),
        };
        let there = Dest {
            org: Some("beta".into()),
            node: Some("b1".into()),
        };
        assert_eq!(
            decide("acme", &wg(1), &here(Some("a2"))),
            Ok((WgType::HandshakeInitiation, "a2"))
        );
        assert_eq!(decide("acme", &wg(4), &there), Err(Fate::Foreign));
        assert_eq!(decide("acme", &wg(4), &here(None)), Err(Fate::Offline));
        assert_eq!(decide("acme", &wg(4), &Dest::default()), Err(Fate::Offline));
        assert_eq!(
            decide("acme", b"hello, plaintext", &here(Some("a2"))),
            Err(Fate::NotWireguard)
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_waiting() {
        let hub = Hub::default();
        let (tx, mut rx) = mpsc::channel(2);
        let id = hub.attach("a2", "acme", tx);
        assert_eq!(hub.offer("a2", "acme", Bytes::from_static(b"1")), Ok(()));
        assert_eq!(hub.offer("a2", "acme", Bytes::from_static(b"2")), Ok(()));
        assert_eq!(
            hub.offer("a2", "acme", Bytes::from_static(b"3")),
            Err(Fate::QueueFull)
        );
        // A socket opened for another organization is not this one's destination.
        assert_eq!(
            hub.offer("a2", "beta", Bytes::from_static(b"x")),
            Err(Fate::Offline)
        );
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"1"));
        // A newer socket replaces the older: the old queue ends, detaching the old keeps the new.
        let (tx2, _rx2) = mpsc::channel(2);
        let id2 = hub.attach("a2", "acme", tx2);
        hub.detach("a2", id);
        assert_eq!(hub.offer("a2", "acme", Bytes::from_static(b"4")), Ok(()));
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"2"));
        assert_eq!(rx.recv().await, None);
        hub.detach("a2", id2);
        assert_eq!(
            hub.offer("a2", "acme", Bytes::from_static(b"5")),
            Err(Fate::Offline)
        );
    }

    proptest! {
        /// Whatever the destination, a frame is forwarded only to a live holder of its own
        /// organization, and only when shaped like WireGuard.
        #[test]
        fn forwarding_matches_the_model(
            ty in 0u8..6,
            sender in prop::sample::select(vec!["acme", "beta"]),
            org in prop::option::of(prop::sample::select(vec!["acme", "beta"])),
            live in any::<bool>(),
        ) {
            let d = if (1..=4).contains(&ty) { wg(ty) } else { vec![ty, 0, 0, 0, 1] };
            let dest = Dest { org: org.map(str::to_string), node: live.then(|| "n".to_string()) };
            let forwarded = decide(sender, &d, &dest).is_ok();
            prop_assert_eq!(forwarded, (1..=4).contains(&ty) && org == Some(sender) && live);
        }
    }
}
