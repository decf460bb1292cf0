//! The mesh task: the one loop that feeds relay datagrams and map updates into the core, runs the
//! stack and the timers, and hands the core's datagrams to the relay channel. It holds the shared
//! lock only for synchronous work, never across an await.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};

use crate::api::Shared;
use crate::map::{NetworkMap, PeerKey};

/// Datagrams taken from the relay channel per lock.
const BATCH: usize = 256;
/// How long one round waits for room in the relay channel before it drops datagrams.
const RELAY_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

pub(crate) async fn run(
    shared: Arc<Shared>,
    stop: Arc<Notify>,
    mut map: watch::Receiver<NetworkMap>,
    mut inbound: mpsc::Receiver<(PeerKey, Bytes)>,
    outbound: mpsc::Sender<(PeerKey, Bytes)>,
) {
    let mut out = Vec::new();
    let (mut inbound_open, mut map_open) = (true, true);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let delay = {
            let mut st = shared.lock();
            let now = Instant::now();
            st.drive(now);
            while let Some(d) = st.core.poll_datagram() {
                out.push(d);
            }
            st.delay(now)
        };
        if send_all(&outbound, &mut out, &shared.dropped)
            .await
            .is_err()
        {
            tracing::warn!("mesh relay channel closed; the mesh stops");
            shared.lock().close();
            return;
        }
        tokio::select! {
            biased;
            _ = stop.notified() => break,
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
    let mut st = shared.lock();
    st.close();
}

/// Hands datagrams to the relay channel. The channel pushes back, but only for a moment: past
/// `RELAY_WAIT` in one round datagrams drop as on a network (TCP retransmits), so two nodes never
/// wait on each other's channels forever. Err: the relay channel is closed.
async fn send_all(
    outbound: &mpsc::Sender<(PeerKey, Bytes)>,
    out: &mut Vec<(PeerKey, Bytes)>,
    dropped: &AtomicU64,
) -> Result<(), ()> {
    let mut waited = false;
    for d in out.drain(..) {
        match outbound.try_send(d) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(()),
            Err(mpsc::error::TrySendError::Full(d)) if !waited => {
                waited = true;
                match tokio::time::timeout(RELAY_WAIT, outbound.send(d)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(()),
                    Err(_) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}
