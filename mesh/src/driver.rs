//! The mesh task: the one loop that feeds relay datagrams and map updates into the core, runs the
//! stack and the timers, and hands the core's datagrams to the relay channel. It holds the shared
//! lock only for synchronous work, never across an await, and it never stops reading the relay
//! while it waits for room to write to it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};

use crate::api::Shared;
use crate::map::{NetworkMap, PeerKey};

/// Datagrams taken from the relay channel per lock.
const BATCH: usize = 256;
/// Datagrams held while the relay channel is full; past this the oldest drop, as on a network.
const PENDING: usize = 8192;

pub(crate) async fn run(
    shared: Arc<Shared>,
    stop: Arc<Notify>,
    mut map: watch::Receiver<NetworkMap>,
    mut inbound: mpsc::Receiver<(PeerKey, Bytes)>,
    outbound: mpsc::Sender<(PeerKey, Bytes)>,
) {
    let mut pending = VecDeque::new();
    let (mut inbound_open, mut map_open) = (true, true);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let delay = {
            let mut st = shared.lock();
            let now = Instant::now();
            st.drive(now);
            while let Some(d) = st.core.poll_datagram() {
                pending.push_back(d);
            }
            st.delay(now)
        };
        if flush(&outbound, &mut pending, &shared.dropped).is_err() {
            break;
        }
        // Waiting for room must not stop the reading: a peer whose task waits on us would wait
        // on a relay that waits on us, and neither would move.
        tokio::select! {
            biased;
            _ = stop.notified() => break,
            permit = outbound.reserve(), if !pending.is_empty() => match permit {
                Ok(permit) => permit.send(pending.pop_front().expect("pending is not empty")),
                Err(_) => break,
            },
            n = inbound.recv_many(&mut batch, BATCH), if inbound_open => {
                inbound_open = n > 0;
                let mut st = shared.lock();
                let now = Instant::now();
                for (from, datagram) in batch.drain(..) {
                    st.core.handle_datagram(from, &datagram, now);
                }
            }
            changed = map.changed(), if map_open => match changed {
                Ok(()) => {
                    let m = map.borrow_and_update().clone();
                    shared.lock().set_map(m);
                }
                Err(_) => map_open = false,
            },
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
    if outbound.is_closed() {
        tracing::warn!("mesh relay channel closed; the mesh stops");
    }
    shared.lock().close();
}

/// Hands what fits to the relay channel without waiting, and drops the oldest datagrams past
/// `PENDING` (TCP sends them again). Err: the relay channel is closed.
fn flush(
    outbound: &mpsc::Sender<(PeerKey, Bytes)>,
    pending: &mut VecDeque<(PeerKey, Bytes)>,
    dropped: &AtomicU64,
) -> Result<(), ()> {
    while let Some(d) = pending.pop_front() {
        match outbound.try_send(d) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(d)) => {
                pending.push_front(d);
                break;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
        }
    }
    let excess = pending.len().saturating_sub(PENDING);
    if excess > 0 {
        pending.drain(..excess);
        dropped.fetch_add(excess as u64, Ordering::Relaxed);
    }
    Ok(())
}
