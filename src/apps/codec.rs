//! The WebSocket codec (yawc) as the in-process apps use it: the options for
//! an app's limits, and completing an upgrade over a socket metered by the
//! process's memory budget ([`crate::budget`]). A leaf of `apps`.
//!
//! How yawc holds an unfinished message (read for `server.max_buffered`): its
//! decoder checks a frame header's claimed length against the limit and then
//! waits, without reserving anything, until that many bytes have arrived; the
//! read buffer (tokio-util's `Framed`) grows by doubling as reads fill it, and
//! fragments are appended to a reassembly buffer that grows the same way. So
//! memory follows what has arrived (up to twice it, buffer slack included),
//! never what a header claims: `tests/budget.rs` holds it to that. Inflated
//! fragments are the exception (more held than read): the echo app, which
//! negotiates compression, reassembles over [`Messages`], which charges them.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use yawc::close::CloseCode;
use yawc::{DeflateOptions, Options, Role, WebSocket};

use super::messages::Messages;
use crate::budget::{Account, Metered};
use crate::upgraded::{OnUpgrade, Upgraded};

/// The close code of a session evicted by the memory budget: 1013 "Try Again
/// Later" (RFC 6455 §7.4.2, IANA registry), not 1009 "Message Too Big". The
/// message was within `max_message_size`; what ran out is the process's
/// shared budget, a temporary condition of the server, and the same message
/// may well go through once other sessions finish. 1009 would tell the client
/// its message is too big, which retrying cannot fix.
pub const BUDGET_CLOSE: CloseCode = CloseCode::Again;
/// The reason sent with [`BUDGET_CLOSE`].
pub const BUDGET_CLOSE_REASON: &str = "server busy: message memory exhausted, try again later";

/// An app session's socket: the upgraded connection, metered by the budget.
pub type AppSocket = Metered<Upgraded>;

/// Starting (and resting) size of the codec's read buffer. yawc defaults to
/// 8 KiB, which was most of an idle session's memory; a larger frame grows the
/// buffer for as long as it takes (a few more reads), then yawc shrinks it back.
const READ_BUFFER: usize = 512;

// The budget leaves out a session holding no more than this buffer holds at
// rest (`budget::UNCOUNTED`): one number, so a change to either must be a
// change to both.
const _: () = assert!(READ_BUFFER == crate::budget::UNCOUNTED);

/// The write buffer starts empty: the encoder reserves exactly what each frame
/// needs, and the buffer keeps that (up to 8 KiB) for the next ones.
const WRITE_BUFFER: usize = 0;

/// yawc options for an app with these limits.
pub fn options(max_message: u64, compression: bool) -> Options {
    let max = usize::try_from(max_message).unwrap_or(usize::MAX);
    // yawc's limits are exclusive; ours are inclusive.
    let opts = Options::default()
        .with_limits(max.saturating_add(1), max.saturating_add(1))
        .with_read_buffer_capacity(READ_BUFFER)
        .with_write_buffer_capacity(WRITE_BUFFER)
        .with_utf8()
        .with_no_delay();
    if compression {
        opts.with_compression_level(yawc::CompressionLevel::fast())
    } else {
        Options {
            compression: None::<DeflateOptions>,
            ..opts
        }
    }
}

/// An upgrade answered but not yet completed (the 101 or, over HTTP/2, the
/// 200 is on its way). Boxed by [`upgrade`]: it waits in every session task.
pub struct Upgrade {
    on: OnUpgrade,
    /// The `Sec-WebSocket-Extensions` the answer agreed to.
    extensions: Option<String>,
    options: Options,
    account: Arc<Account>,
}

/// Answers a validated upgrade with `options`; the session's bytes will be
/// charged to `account`. yawc negotiates and writes the answer; the connection
/// is taken from hyper here first, so that the codec can run over a metered
/// socket (yawc's own future would wrap the bare one), and from the fast
/// path, which yawc does not know.
pub fn upgrade(
    req: &mut Request<crate::body::RequestBody>,
    options: Options,
    account: Arc<Account>,
) -> Result<(Response<Empty<Bytes>>, Box<Upgrade>), yawc::WebSocketError> {
    let on = crate::upgraded::on(&mut *req);
    // RFC 8441's `:protocol` passed validation in any case (`WebSocket`);
    // yawc takes only the lowercase token, and would look for a key instead.
    if req
        .extensions()
        .get::<hyper::ext::Protocol>()
        .is_some_and(|p| p.as_str() != "websocket")
    {
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
    }
    // yawc's own `UpgradeFut` finds no connection left to take and is dropped
    // unpolled.
    let (resp, _) = WebSocket::upgrade_with_options(&mut *req, options.clone())?;
    let extensions = resp
        .headers()
        .get(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((
        resp,
        Box::new(Upgrade {
            on,
            extensions,
            options,
            account,
        }),
    ))
}

/// Completes an app's upgrade. The codec comes back boxed and out of any
/// `match` scrutinee: an idle session's future would otherwise hold the
/// ~900-byte codec two or three times for the session's whole life.
pub async fn upgraded(up: Box<Upgrade>, app: &'static str) -> Option<Box<WebSocket<AppSocket>>> {
    open(up, app).await.map(|(ws, _)| Box::new(ws))
}

/// [`upgraded`] for an app that reassembles messages itself, charging what
/// inflated fragments hold to its account ([`Messages`]), up to the
/// `max_message_size` its [`options`] were made with.
pub async fn upgraded_messages(
    up: Box<Upgrade>,
    app: &'static str,
) -> Option<Box<Messages<AppSocket>>> {
    let account = up.account.clone();
    // `options` made the limit exclusive, one past the message size.
    let max = up
        .options
        .max_payload_read
        .map_or(usize::MAX, |m| m.saturating_sub(1));
    let (ws, inflates) = open(up, app).await?;
    Some(Box::new(Messages::new(
        ws.into_streaming(),
        account,
        max,
        inflates,
    )))
}

/// The codec over the upgraded, metered socket, and whether permessage-deflate
/// was agreed (the only extension wsgate answers).
async fn open(up: Box<Upgrade>, app: &'static str) -> Option<(WebSocket<AppSocket>, bool)> {
    let Upgrade {
        on,
        extensions,
        options,
        account,
    } = *up;
    let io = match on.await {
        Ok(io) => Metered::new(io, account),
        Err(e) => {
            tracing::debug!(app, error = %e, "upgrade did not complete");
            return None;
        }
    };
    // The same negotiation yawc's future runs, from the extensions the
    // answer agreed to.
    let inflates = extensions.is_some();
    match WebSocket::from_stream_with_extensions(io, Role::Server, extensions.as_deref(), options) {
        Ok(ws) => Some((ws, inflates)),
        Err(e) => {
            tracing::debug!(app, error = %e, "codec setup failed");
            None
        }
    }
}

/// How long closing an evicted session may take (writing the close to a
/// client that does not read, and waiting for it to hang up) before the
/// socket is dropped.
const EVICTED_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Closes a session the budget evicted: the 1013 close frame, the socket's
/// write side, then what the client still sends is drained unread
/// ([`crate::budget::Metered`] drops it) until it hangs up. No close handshake
/// through the codec: its memory is what the process is short of, and the
/// client may be in the middle of a message. Draining (rather than dropping
/// the socket with unread bytes, which sends a reset) keeps the close frame
/// from being lost to the reset.
pub async fn close_evicted<W: Frames>(ws: &mut W) {
    use futures_util::SinkExt;
    let _ = tokio::time::timeout(EVICTED_CLOSE_TIMEOUT, async {
        ws.send(yawc::frame::Frame::close(BUDGET_CLOSE, BUDGET_CLOSE_REASON))
            .await?;
        ws.close().await?;
        // Ends at the client's EOF (or an error); frames cannot come: the
        // socket hands the codec nothing more.
        while std::future::poll_fn(|cx| ws.poll_frame(cx)).await.is_ok() {}
        Ok::<_, yawc::WebSocketError>(())
    })
    .await;
}

/// What closing an evicted session needs of a codec: frames in and out
/// (yawc's `WebSocket` for the chat, [`Messages`] for the echo app).
pub trait Frames:
    futures_util::Sink<yawc::frame::Frame, Error = yawc::WebSocketError> + Unpin
{
    fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<yawc::Result<yawc::frame::Frame>>;
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Frames for WebSocket<S> {
    fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<yawc::Result<yawc::frame::Frame>> {
        self.poll_next_frame(cx)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Frames for Messages<S> {
    fn poll_frame(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<yawc::Result<yawc::frame::Frame>> {
        self.poll_next_frame(cx)
    }
}

/// A compressed message that does not inflate: yawc reports it as an I/O
/// error of kind `InvalidInput`, which no socket error has, and queues its
/// own close (1011, `corrupt deflate stream`; 1007 would say it better, but
/// yawc's queued close goes first). Taken for a socket error, it was answered
/// with a plain 1000 and no reason.
pub fn corrupt_deflate(err: &yawc::WebSocketError) -> bool {
    err.as_io_error()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::InvalidInput)
}

/// The close code a read error leads to (for logs and metrics): what yawc
/// queued for it, or 1006 for a connection that ended without one.
pub fn close_code_for(err: &yawc::WebSocketError) -> u16 {
    use yawc::WebSocketError as E;
    match err {
        E::InvalidUTF8 => 1007,
        e if corrupt_deflate(e) => 1011,
        E::FrameTooLarge => 1009,
        E::InvalidOpCode(_) => 1003,
        E::ConnectionClosed => 1006,
        e if e.is_io_error() => 1006,
        _ => 1002,
    }
}
