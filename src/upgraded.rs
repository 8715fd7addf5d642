//! A client connection once its WebSocket handshake is answered, whichever
//! server answered it. The HTTP/1.1 fast path (`server::h1`) answers most
//! handshakes itself and hands the socket over here; hyper answers the rest
//! (RFC 8441 over HTTP/2, and HTTP/1.1 heads the fast path leaves to it) and
//! hands over its own `Upgraded`. Handlers take the connection with [`on`],
//! where they would call `hyper::upgrade::on`. A leaf of the crate but for
//! [`crate::rewind`] and [`crate::send_timeout`].

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::rewind::Rewind;
use crate::send_timeout::SendTimed;

/// Any client stream: TCP, TLS, behind a PROXY header.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The stream as its own type, for a session that can use more than
    /// reads and writes of it (the byte splice's `splice(2)` of a TCP socket).
    fn as_any(&self) -> &dyn Any;
}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Why an answered upgrade has no connection to give.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0}")]
    Hyper(#[from] hyper::Error),
    #[error("the connection ended before the upgrade's answer was sent")]
    NotSent,
}

/// The connection after the 101 (or HTTP/2's 200): its bytes already read
/// come first. hyper's `Upgraded` is boxed into the same shape (it is rare:
/// RFC 8441, and handshakes the fast path leaves to hyper), so the sessions'
/// reads and writes go through one type and one indirection.
pub type Upgraded = Rewind<Box<dyn Io>>;

/// The fast path's side of one upgrade: it sends the connection once the
/// answer is written. Dropped unsent (a refused handshake, a failed write),
/// the handler's [`OnUpgrade`] ends with [`UpgradeError::NotSent`].
pub struct Handover(oneshot::Sender<Upgraded>);

impl Handover {
    /// A handover, and the extension the request carries to its handler.
    pub fn new() -> (Self, Pending) {
        let (tx, rx) = oneshot::channel();
        (Handover(tx), Pending(Some(rx)))
    }

    /// Gives the connection, with the bytes read past the request, to the
    /// handler's session.
    pub fn send(self, io: Box<dyn Io>, buffered: Bytes) {
        // A session that is gone (its handler cancelled) drops the connection.
        let _ = self.0.send(Rewind::new(buffered, io));
    }
}

/// `server.send_timeout` for an upgrade hyper answers over HTTP/2 (RFC 8441),
/// set by the server as a request extension. An HTTP/2 stream's writes wait
/// for its flow-control window, which the connection's socket timer does not
/// see: a client that keeps the window shut held the session for as long as
/// it liked. HTTP/1.1 upgrades write to the timed socket itself.
#[derive(Debug, Clone, Copy)]
pub struct SendLimit(pub std::time::Duration);

/// The request extension through which a fast-path handshake's handler gets
/// its connection.
pub struct Pending(Option<oneshot::Receiver<Upgraded>>);

/// Extensions must be `Clone`; a copy of a request carries no connection (as
/// a copy of hyper's upgrade would find it taken), and nothing copies one to
/// upgrade it.
impl Clone for Pending {
    fn clone(&self) -> Self {
        Pending(None)
    }
}

/// The connection an answered upgrade will bring.
pub enum OnUpgrade {
    Hyper(hyper::upgrade::OnUpgrade, Option<SendLimit>),
    Fast(Option<oneshot::Receiver<Upgraded>>),
}

/// Takes the upgrade a request may become; call before answering it.
pub fn on<B>(req: &mut http::Request<B>) -> OnUpgrade {
    match req.extensions_mut().remove::<Pending>() {
        Some(Pending(rx)) => OnUpgrade::Fast(rx),
        None => {
            let limit = req.extensions_mut().remove::<SendLimit>();
            OnUpgrade::Hyper(hyper::upgrade::on(req), limit)
        }
    }
}

impl Future for OnUpgrade {
    type Output = Result<Upgraded, UpgradeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            OnUpgrade::Hyper(on, limit) => Pin::new(on).poll(cx).map(|r| {
                let io = TokioIo::new(r?);
                let io: Box<dyn Io> = match limit {
                    Some(SendLimit(limit)) => Box::new(SendTimed::new(io, *limit)),
                    None => Box::new(io),
                };
                Ok(Rewind::new(Bytes::new(), io))
            }),
            OnUpgrade::Fast(None) => Poll::Ready(Err(UpgradeError::NotSent)),
            OnUpgrade::Fast(Some(rx)) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.map_err(|_| UpgradeError::NotSent)),
        }
    }
}
