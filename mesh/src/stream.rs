//! `MeshStream` and `MeshListener`: tokio streams over smoltcp TCP sockets that the mesh task
//! drives. They only touch their own socket under the shared lock and wake the task; they never
//! poll the interface themselves.

use std::io;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use smoltcp::wire::IpAddress;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::api::Shared;
use crate::error::MeshError;

/// A TCP connection over the mesh.
#[derive(Debug)]
pub struct MeshStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
}

impl MeshStream {
    pub(crate) fn new(shared: Arc<Shared>, handle: SocketHandle) -> Self {
        MeshStream { shared, handle }
    }

    /// The peer's mesh address.
    pub fn peer_addr(&self) -> Option<SocketAddrV4> {
        let mut st = self.shared.lock();
        endpoint(st.stack.tcp(self.handle))
    }
}

pub(crate) fn endpoint(s: &tcp::Socket) -> Option<SocketAddrV4> {
    match s.remote_endpoint()?.addr {
        IpAddress::Ipv4(ip) => Some(SocketAddrV4::new(ip, s.remote_endpoint()?.port)),
    }
}

impl AsyncRead for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let s = st.stack.tcp(self.handle);
        if s.can_recv() {
            let n = s
                .recv_slice(buf.initialize_unfilled())
                .map_err(|e| io::Error::other(e.to_string()))?;
            buf.advance(n);
            drop(st);
            self.shared.wake.notify_one();
            return Poll::Ready(Ok(()));
        }
        if !s.may_recv() {
            return Poll::Ready(Ok(()));
        }
        s.register_recv_waker(cx.waker());
        Poll::Pending
    }
}

impl AsyncWrite for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        let s = st.stack.tcp(self.handle);
        if !s.may_send() {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if s.can_send() {
            let n = s
                .send_slice(data)
                .map_err(|e| io::Error::other(e.to_string()))?;
            drop(st);
            self.shared.wake.notify_one();
            return Poll::Ready(Ok(n));
        }
        s.register_send_waker(cx.waker());
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared.lock().stack.tcp(self.handle).close();
        self.shared.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for MeshStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.stack.tcp(self.handle).close();
        st.orphans.push(self.handle);
        drop(st);
        self.shared.wake.notify_one();
    }
}

/// A listening mesh port.
#[derive(Debug)]
pub struct MeshListener {
    shared: Arc<Shared>,
    port: u16,
}

impl MeshListener {
    pub(crate) fn new(shared: Arc<Shared>, port: u16) -> Self {
        MeshListener { shared, port }
    }

    /// The next connection a peer opened, with the peer's mesh address.
    pub async fn accept(&self) -> Result<(MeshStream, SocketAddrV4), MeshError> {
        let handle = std::future::poll_fn(|cx| {
            let mut st = self.shared.lock();
            if st.closed {
                return Poll::Ready(Err(MeshError::Shutdown));
            }
            if let Some(h) = st.stack.accept(self.port) {
                return Poll::Ready(Ok(h));
            }
            if let Some(l) = st.stack.listeners.get_mut(&self.port) {
                l.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await?;
        let stream = MeshStream::new(self.shared.clone(), handle);
        let addr = stream
            .peer_addr()
            .unwrap_or(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0));
        Ok((stream, addr))
    }
}

impl Drop for MeshListener {
    fn drop(&mut self) {
        self.shared.lock().stack.unlisten(self.port);
    }
}
