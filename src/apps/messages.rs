//! Whole messages out of yawc's `Streaming` frames, for the echo app: the
//! reassembly yawc's `WebSocket` does, with the memory it takes charged to
//! the session's budget account ([`crate::budget`]).
//!
//! Why not yawc's own: a permessage-deflate message sent in fragments is
//! inflated fragment by fragment into its reassembly buffer, where the budget
//! (which meters bytes read from the socket) cannot see it. Deflate reaches
//! about 1000:1, so a session could hold `max_message_size` inflated for a
//! few kilobytes counted, and every session as much. Here each inflated
//! fragment is charged as it is appended, so `server.max_buffered` bounds
//! those bytes too. Uncompressed fragments are not charged again: the bytes
//! read for them already are.
//!
//! The rules are yawc's `WebSocket` rules (RFC 6455 §5.4): a data frame
//! while a message is in progress, or a continuation without one, is a
//! protocol error (1002); a message over the limit is 1009 (`FrameTooLarge`,
//! checked as fragments arrive); a text message must be UTF-8 as a whole
//! (1007). Control frames pass through between fragments.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::Sink;
use yawc::frame::{Frame, OpCode};
use yawc::streaming::Streaming;
use yawc::WebSocketError;

use crate::budget::Account;

/// A message in progress.
struct Partial {
    opcode: OpCode,
    payload: BytesMut,
}

/// A session's codec, handing out whole messages and control frames.
pub struct Messages<S> {
    streaming: Streaming<S>,
    partial: Option<Partial>,
    account: Arc<Account>,
    /// Messages larger than this are refused (1009).
    max: usize,
    /// permessage-deflate was agreed: fragments arrive inflated, so what they
    /// hold is more than what was read for them, and is charged.
    inflates: bool,
}

impl<S> Messages<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    pub fn new(streaming: Streaming<S>, account: Arc<Account>, max: usize, inflates: bool) -> Self {
        Self {
            streaming,
            partial: None,
            account,
            max,
            inflates,
        }
    }

    /// The next whole message or control frame.
    pub fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<yawc::Result<Frame>> {
        loop {
            let frame = match self.streaming.poll_next_frame(cx) {
                Poll::Ready(Ok(frame)) => frame,
                other => return other,
            };
            match self.assemble(frame) {
                Ok(Some(whole)) => return Poll::Ready(Ok(whole)),
                Ok(None) => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    pub async fn next_frame(&mut self) -> yawc::Result<Frame> {
        poll_fn(|cx| self.poll_next_frame(cx)).await
    }

    /// One frame in: a whole message or control frame out, or `None` while
    /// a message is in progress.
    fn assemble(&mut self, frame: Frame) -> yawc::Result<Option<Frame>> {
        let whole = match (frame.opcode(), self.partial.as_mut()) {
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(WebSocketError::InvalidFragment)
            }
            (OpCode::Text | OpCode::Binary, None) if frame.is_fin() => frame,
            (OpCode::Text | OpCode::Binary, None) => {
                let payload = BytesMut::from(frame.payload().as_ref());
                self.charge(payload.len());
                self.partial = Some(Partial {
                    opcode: frame.opcode(),
                    payload,
                });
                return Ok(None);
            }
            (OpCode::Continuation, None) => return Err(WebSocketError::InvalidFragment),
            (OpCode::Continuation, Some(p)) => {
                let len = frame.payload().len();
                if p.payload.len().saturating_add(len) > self.max {
                    return Err(WebSocketError::FrameTooLarge);
                }
                p.payload.extend_from_slice(frame.payload());
                self.charge(len);
                if !frame.is_fin() {
                    return Ok(None);
                }
                let Some(p) = self.partial.take() else {
                    return Err(WebSocketError::InvalidFragment);
                };
                match p.opcode {
                    OpCode::Text => Frame::text(p.payload.freeze()),
                    _ => Frame::binary(p.payload.freeze()),
                }
            }
            _ => return Ok(Some(frame)),
        };
        if whole.opcode() == OpCode::Text && std::str::from_utf8(whole.payload()).is_err() {
            return Err(WebSocketError::InvalidUTF8);
        }
        Ok(Some(whole))
    }

    fn charge(&self, inflated: usize) {
        if self.inflates {
            self.account.hold(inflated);
        }
    }
}

impl<S> Sink<Frame> for Messages<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    type Error = WebSocketError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<yawc::Result<()>> {
        Pin::new(&mut self.streaming).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> yawc::Result<()> {
        Pin::new(&mut self.streaming).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<yawc::Result<()>> {
        Pin::new(&mut self.streaming).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<yawc::Result<()>> {
        Pin::new(&mut self.streaming).poll_close(cx)
    }
}
