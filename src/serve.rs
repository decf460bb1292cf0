//! Serving a router on any listener: the loopback TCP listener of a service, or more beside it
//! (the node's mesh address, through a [`Handle`]), each handler seeing the client's address as
//! `ConnectInfo<SocketAddr>`, until a stop token fires. It only serves: it must never decide
//! who may connect (the routers do) nor bind anything itself.

use std::net::SocketAddr;

use axum::serve::{Listener, ListenerExt as _};
use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `stop` fires (open connections finish first); `what`
/// names the service in the log when serving fails.
pub fn spawn<L>(
    listener: L,
    router: Router,
    stop: CancellationToken,
    what: &'static str,
) -> JoinHandle<()>
where
    L: Listener<Addr = SocketAddr>,
{
    // `tap_io` makes the listener's own address type the connection info, whatever the listener.
    let listener = listener.tap_io(|_| {});
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, service = what, "serving failed");
        }
    })
}

/// What serves one more listener of a running service: its router and its stop token.
#[derive(Debug, Clone)]
pub struct Handle {
    router: Router,
    stop: CancellationToken,
    what: &'static str,
}

impl Handle {
    pub fn new(router: Router, stop: CancellationToken, what: &'static str) -> Self {
        Self { router, stop, what }
    }

    /// Serves `listener` too, until the service stops or the returned token is cancelled (the
    /// listener's network went away).
    pub fn serve<L>(&self, listener: L) -> CancellationToken
    where
        L: Listener<Addr = SocketAddr>,
    {
        let stop = self.stop.child_token();
        spawn(listener, self.router.clone(), stop.clone(), self.what);
        stop
    }

    /// The service's name, for the logs.
    pub fn name(&self) -> &'static str {
        self.what
    }
}
