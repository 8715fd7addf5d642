//! One direction of the inspected splice: a pump reads its source, runs
//! the bytes through a [`Scanner`], and writes what passes to its
//! destination, with the frames the gateway injects put in between frames.

use std::io;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::limit::gcra::Bucket;

use super::scan::{self, Event, Scanner, MAX_HEADER, OP_CLOSE, OP_PING, OP_PONG};
use super::{
    CloseReason, Inject, InspectMetrics, Shared, Side, SpliceEnd, CLOSE_ABNORMAL, CLOSE_GOING_AWAY,
    CLOSE_POLICY, CLOSE_PROTOCOL, CLOSE_TOO_BIG, PING_LEN,
};

/// What happens to the bytes of the frame in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Forward,
    /// A pong that may answer our ping: kept until complete.
    Hold,
    Drop,
}

/// One direction: reads `src`, writes `dst` (the other side).
pub(super) struct Pump<'a, R, W> {
    pub from: Side,
    pub src: R,
    pub dst: W,
    pub cmds: mpsc::UnboundedReceiver<Inject>,
    /// Commands for the pump writing to our source.
    pub other: mpsc::UnboundedSender<Inject>,
    pub shared: &'a Shared,
}

/// A pump's per-frame state, apart from its IO.
struct PumpState {
    scanner: Scanner,
    mode: Mode,
    held: [u8; MAX_HEADER + PING_LEN as usize],
    held_len: usize,
    pending_ping: Option<[u8; PING_LEN as usize]>,
    /// The counter of a ping just put in the output, for the keeper.
    ping_out: Option<u32>,
    pending_close: Option<(u16, CloseReason, bool)>,
    /// A close went to the destination (forwarded or injected).
    closed_out: bool,
    /// We injected a close: everything from the source is dropped from now on.
    injected: bool,
    wait_reply: bool,
    /// The source sent its close after ours.
    src_closed: bool,
    /// The scanner failed: the source is not WebSocket.
    failed: bool,
    /// Toward the upstream: injected frames are masked.
    mask_out: bool,
    /// `ws_message_rate` on the client's messages (client pump only).
    rate: Option<Bucket>,
}

impl PumpState {
    /// Is the destination between frames (nothing of a frame half-written)?
    fn dst_at_boundary(&self) -> bool {
        !self.scanner.in_payload() || self.mode != Mode::Forward
    }

    fn push_control(&self, out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
        let mut f = [0u8; MAX_HEADER + 125];
        let mask = self.mask_out.then(rand::random::<[u8; 4]>);
        let n = scan::write_control(&mut f, opcode, payload, mask);
        out.extend_from_slice(&f[..n]);
    }

    /// Writes pending injections into `out` if the destination is between
    /// frames; the close code written, if it wrote a close.
    fn inject_pending(&mut self, out: &mut Vec<u8>, metrics: &InspectMetrics) -> Option<u16> {
        let mut closed = None;
        if !self.dst_at_boundary() {
            return None;
        }
        if let Some((code, reason, wait)) = self.pending_close.take() {
            if !self.closed_out {
                let mut payload = code.to_be_bytes().to_vec();
                reason.append_to(&mut payload);
                self.push_control(out, OP_CLOSE, &payload);
                metrics.close_code(code);
                self.closed_out = true;
                closed = Some(code);
            }
            self.injected = true;
            self.wait_reply = wait;
            self.pending_ping = None;
            if self.scanner.in_payload() {
                self.mode = Mode::Drop;
            }
        }
        if let Some(p) = self.pending_ping.take() {
            if !self.closed_out {
                self.push_control(out, OP_PING, &p);
                self.ping_out = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
            }
        }
        closed
    }

    fn done(&self) -> bool {
        self.failed || (self.injected && (!self.wait_reply || self.src_closed))
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Pump<'_, R, W> {
    pub(super) async fn run(mut self) -> io::Result<()> {
        let r = self.pump().await;
        let _ = self.dst.flush().await;
        let _ = self.dst.shutdown().await;
        r
    }

    async fn pump(&mut self) -> io::Result<()> {
        let i = self.from as usize;
        let mut st = PumpState {
            // RFC 6455 §5.1: client frames are masked, server frames not.
            scanner: Scanner::expecting_mask(self.from == Side::Client),
            mode: Mode::Forward,
            held: [0; MAX_HEADER + PING_LEN as usize],
            held_len: 0,
            pending_ping: None,
            ping_out: None,
            pending_close: None,
            closed_out: false,
            injected: false,
            wait_reply: true,
            src_closed: false,
            failed: false,
            mask_out: self.from == Side::Client,
            rate: match self.from {
                Side::Client => self.shared.cfg.message_rate.map(Bucket::new),
                Side::Upstream => None,
            },
        };
        let mut inb = vec![0u8; 16 * 1024];
        let mut out: Vec<u8> = Vec::with_capacity(16 * 1024 + 2 * (MAX_HEADER + 125));
        let mut cmds_open = true;
        while !st.done() {
            let n = tokio::select! {
                biased;
                cmd = self.cmds.recv(), if cmds_open => {
                    match cmd {
                        Some(Inject::Ping(p)) => st.pending_ping = Some(p),
                        Some(Inject::Close { code, reason, wait_reply }) => st.pending_close = Some((code, reason, wait_reply)),
                        None => cmds_open = false,
                    }
                    0
                }
                r = self.src.read(&mut inb) => match r? {
                    0 => return self.source_ended(&mut st, &mut out).await,
                    n => n,
                },
            };
            if n > 0 {
                self.shared.alive[i].store(true, Ordering::Relaxed);
                self.shared.bytes[i].fetch_add(n as u64, Ordering::Relaxed);
                self.shared.metrics.bytes[i].inc_by(n as u64);
            }
            let messages = self.process(&mut st, &inb[..n], &mut out);
            if messages > 0 {
                self.shared.metrics.messages[i].inc_by(messages);
                self.shared.messages[i].fetch_add(messages, Ordering::Relaxed);
            }
            self.injected(st.inject_pending(&mut out, &self.shared.metrics));
            self.write_out(&mut st, &mut out).await?;
        }
        Ok(())
    }

    /// Writes `out` to the destination, telling the keeper what the
    /// destination takes and while it makes the pump wait.
    async fn write_out(&mut self, st: &mut PumpState, out: &mut Vec<u8>) -> io::Result<()> {
        let to = 1 - self.from as usize;
        let sh = self.shared;
        if let Some(c) = st.ping_out.take() {
            sh.pinged[to].store(c, Ordering::Relaxed);
        }
        if out.is_empty() {
            return Ok(());
        }
        sh.writing[to].store(true, Ordering::Relaxed);
        let mut at = 0;
        while at < out.len() {
            let n = self.dst.write(&out[at..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            at += n;
            sh.took[to].store(true, Ordering::Relaxed);
        }
        self.dst.flush().await?;
        sh.writing[to].store(false, Ordering::Relaxed);
        out.clear();
        Ok(())
    }

    /// The source's stream ended. Without its close frame that is an
    /// abnormal end: the destination is told 1001 (when between frames and
    /// not closed yet), and the other pump gets [`super::CLOSE_GRACE`] to
    /// finish, where it would wait for its own source's end (an upstream
    /// gone, a client that never closes: the session held its slot until
    /// the idle timeout; review 14). The byte splice ends with either side.
    async fn source_ended(&mut self, st: &mut PumpState, out: &mut Vec<u8>) -> io::Result<()> {
        if !st.closed_out && !st.injected {
            if self.from == Side::Client {
                // The access line's code for a client gone without a close
                // (RFC 6455 §7.1.5's 1006), before the upstream's answer to
                // the 1001 sent it is taken for the session's.
                self.shared.note_close(CLOSE_ABNORMAL);
            }
            st.pending_close = Some((CLOSE_GOING_AWAY, CloseReason::NONE, false));
            self.injected(st.inject_pending(out, &self.shared.metrics));
            self.write_out(st, out).await?;
        }
        self.shared.closing.cancel();
        Ok(())
    }

    /// Runs one chunk through the scanner, appending what the destination gets
    /// to `out`. Returns the number of messages finished.
    fn process(&self, st: &mut PumpState, chunk: &[u8], out: &mut Vec<u8>) -> u64 {
        let sh = self.shared;
        let mut pos = 0;
        let mut messages = 0;
        while !st.failed {
            let payload = st.scanner.in_payload();
            let (used, ev) = st.scanner.feed(&chunk[pos..]);
            if payload {
                let bytes = &chunk[pos..pos + used];
                match st.mode {
                    Mode::Forward => out.extend_from_slice(bytes),
                    Mode::Hold => {
                        let end = (st.held_len + used).min(st.held.len());
                        st.held[st.held_len..end].copy_from_slice(&bytes[..end - st.held_len]);
                        st.held_len = end;
                    }
                    Mode::Drop => {}
                }
            }
            pos += used;
            match ev {
                None => break,
                Some(Event::Header(h)) => {
                    if st.injected {
                        st.mode = Mode::Drop;
                    } else if !h.is_control() && st.scanner.message_len() > sh.cfg.max_message_size
                    {
                        tracing::debug!(route = %sh.metrics.route, from = ?self.from, size = st.scanner.message_len(), "message too big");
                        sh.set_end(SpliceEnd::TooBig);
                        self.close_both(st, CLOSE_TOO_BIG, true);
                    } else if h.opcode != 0
                        && !h.is_control()
                        && st.rate.as_mut().is_some_and(|b| b.take().is_err())
                    {
                        // A new data message (not a continuation) over the rate.
                        tracing::debug!(route = %sh.metrics.route, "client message rate exceeded");
                        if let Some(c) = &sh.metrics.limited {
                            c.inc();
                        }
                        sh.set_end(SpliceEnd::Policy);
                        self.close_both(st, CLOSE_POLICY, true);
                    } else if h.opcode == OP_PONG && h.len == PING_LEN {
                        st.mode = Mode::Hold;
                        let hb = st.scanner.header_bytes();
                        st.held[..hb.len()].copy_from_slice(hb);
                        st.held_len = hb.len();
                    } else {
                        st.mode = Mode::Forward;
                        out.extend_from_slice(st.scanner.header_bytes());
                    }
                }
                Some(Event::End(e)) => {
                    // A message refused or cut by a close is not one delivered.
                    if e.message_done && st.mode != Mode::Drop {
                        messages += 1;
                    }
                    if e.header.opcode == OP_CLOSE {
                        if st.injected {
                            st.src_closed = true;
                        } else {
                            sh.metrics.close_code(e.close_code.unwrap_or(1005));
                            sh.note_close(e.close_code.unwrap_or(1005));
                            sh.peer_closing.store(true, Ordering::Relaxed);
                            st.closed_out = true;
                        }
                    }
                    if st.mode == Mode::Hold {
                        let hl = usize::from(e.header.header_len);
                        let mut p = [0u8; PING_LEN as usize];
                        for (k, b) in st.held[hl..st.held_len].iter().enumerate().take(p.len()) {
                            p[k] = b ^ e.header.mask.map_or(0, |m| m[k % 4]);
                        }
                        if p[..4] != sh.nonce {
                            out.extend_from_slice(&st.held[..st.held_len]);
                        } else {
                            sh.own_pongs
                                .fetch_add(st.held_len as u64, Ordering::Relaxed);
                        }
                        st.held_len = 0;
                    }
                    st.mode = if st.injected {
                        Mode::Drop
                    } else {
                        Mode::Forward
                    };
                    self.injected(st.inject_pending(out, &sh.metrics));
                    if st.done() {
                        break;
                    }
                }
                Some(Event::Error(e)) => {
                    tracing::debug!(route = %sh.metrics.route, from = ?self.from, error = %e, "not a WebSocket stream");
                    sh.set_end(SpliceEnd::Protocol);
                    self.close_both(st, CLOSE_PROTOCOL, false);
                    st.failed = true;
                }
            }
        }
        messages
    }

    /// A close the gateway wrote: the session's code when it went to the
    /// client.
    fn injected(&self, close: Option<u16>) {
        if let (Some(code), Side::Upstream) = (close, self.from) {
            self.shared.note_close(code);
        }
    }

    /// The source broke a rule: `code` to it, 1001 to the destination (which
    /// is between frames: the offending header was not forwarded).
    fn close_both(&self, st: &mut PumpState, code: u16, wait_reply: bool) {
        let _ = self.other.send(Inject::Close {
            code,
            reason: CloseReason::NONE,
            wait_reply: true,
        });
        st.mode = Mode::Drop;
        st.pending_close = Some((CLOSE_GOING_AWAY, CloseReason::NONE, wait_reply));
        self.shared.closing.cancel();
    }
}
