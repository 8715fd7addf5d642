//! A WebSocket frame-header scanner for one direction of an inspected splice.
//!
//! It is a pure state machine fed arbitrary byte chunks (however the network
//! splits them) that reports where frames begin and end, their opcode, FIN, mask
//! and payload length, and the running size of the current (possibly
//! fragmented) message. It never allocates, never looks at payload bytes except
//! the 2-byte code of a close frame (unmasked with the frame's key), and never
//! inflates compressed data: RSV bits are reported, not interpreted.
//!
//! Each [`Scanner::feed`] call consumes either header bytes or payload bytes of
//! one frame, never both, and stops after the first [`Event`], so a caller can
//! tell which bytes belong to which frame by asking [`Scanner::in_payload`]
//! before the call.

/// The largest header: 2 bytes, a 64-bit length and a mask key.
pub const MAX_HEADER: usize = 14;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A frame header as read off the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..3 as the low 3 bits (RSV1 = 0b100: permessage-deflate).
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub len: u64,
    /// Header length on the wire (2..=14).
    pub header_len: u8,
}

impl FrameHeader {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// The end of a frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEnd {
    pub header: FrameHeader,
    /// For a close frame: its status code, if it carries one.
    pub close_code: Option<u16>,
    /// This frame finished a data message (FIN on a text, binary or continuation frame).
    pub message_done: bool,
}

/// A stream that no WebSocket endpoint may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("control frame with a {0}-byte payload (at most 125)")]
    ControlTooLong(u64),
    #[error("fragmented control frame")]
    FragmentedControl,
    #[error("continuation frame outside a fragmented message")]
    UnexpectedContinuation,
    #[error("new data frame before the fragmented message finished")]
    UnfinishedMessage,
    #[error("64-bit payload length with the high bit set")]
    LengthOverflow,
    #[error("unmasked frame from the client")]
    Unmasked,
    #[error("masked frame from the server")]
    Masked,
}

/// What a [`Scanner::feed`] call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A header is complete; its payload follows.
    Header(FrameHeader),
    /// A frame (header and payload) is complete: the scanner is between frames.
    End(FrameEnd),
    /// The stream is not WebSocket; the scanner stays failed.
    Error(ScanError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Payload,
    Failed(ScanError),
}

/// Tracks frame boundaries in one direction. See the module docs.
#[derive(Debug, Clone)]
pub struct Scanner {
    state: State,
    hdr: [u8; MAX_HEADER],
    hdr_len: u8,
    cur: Option<FrameHeader>,
    /// Payload bytes still to come in the current frame.
    remaining: u64,
    /// Payload bytes of the current frame already consumed.
    offset: u64,
    close_code: [u8; 2],
    in_message: bool,
    message_len: u64,
    /// Whether frames must be masked (RFC 6455 §5.1: a client's are, a
    /// server's are not); `None` takes either.
    masked: Option<bool>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    pub const fn new() -> Self {
        Self {
            state: State::Header,
            hdr: [0; MAX_HEADER],
            hdr_len: 0,
            cur: None,
            remaining: 0,
            offset: 0,
            close_code: [0; 2],
            in_message: false,
            message_len: 0,
            masked: None,
        }
    }

    /// A scanner that fails a frame masked otherwise than `masked` says:
    /// `true` for a client's stream, `false` for a server's.
    pub const fn expecting_mask(masked: bool) -> Self {
        let mut s = Self::new();
        s.masked = Some(masked);
        s
    }

    /// Between frames (no header byte of the next frame seen yet).
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header && self.hdr_len == 0
    }

    /// The next bytes fed are payload of the current frame (or its end is due).
    pub fn in_payload(&self) -> bool {
        self.state == State::Payload
    }

    /// The raw bytes of the current frame's header (complete once
    /// [`Event::Header`] was returned).
    pub fn header_bytes(&self) -> &[u8] {
        &self.hdr[..usize::from(self.hdr_len)]
    }

    /// Size so far of the data message in progress, including the current frame.
    pub fn message_len(&self) -> u64 {
        self.message_len
    }

    /// Consumes bytes from `input` up to and including the first event. Returns
    /// the bytes consumed and the event, if any. A frame whose payload is
    /// complete reports [`Event::End`] even when `input` is empty.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        match self.state {
            State::Failed(e) => (0, Some(Event::Error(e))),
            State::Header => self.feed_header(input),
            State::Payload => self.feed_payload(input),
        }
    }

    fn needed(&self) -> usize {
        if self.hdr_len < 2 {
            return 2;
        }
        let ext = match self.hdr[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn feed_header(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let mut used = 0;
        loop {
            let need = self.needed();
            let have = usize::from(self.hdr_len);
            if have >= need && have >= 2 {
                break;
            }
            let take = (need - have).min(input.len() - used);
            if take == 0 {
                return (used, None);
            }
            self.hdr[have..have + take].copy_from_slice(&input[used..used + take]);
            self.hdr_len += take as u8;
            used += take;
        }
        match self.parse_header() {
            Ok(h) => {
                self.cur = Some(h);
                self.remaining = h.len;
                self.offset = 0;
                self.close_code = [0; 2];
                self.state = State::Payload;
                (used, Some(Event::Header(h)))
            }
            Err(e) => {
                self.state = State::Failed(e);
                (used, Some(Event::Error(e)))
            }
        }
    }

    fn parse_header(&mut self) -> Result<FrameHeader, ScanError> {
        let h = &self.hdr;
        let fin = h[0] & 0x80 != 0;
        let rsv = (h[0] >> 4) & 0x7;
        let opcode = h[0] & 0x0f;
        let masked = h[1] & 0x80 != 0;
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let l = u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]);
                if l >> 63 != 0 {
                    return Err(ScanError::LengthOverflow);
                }
                (l, 10)
            }
            n => (u64::from(n), 2),
        };
        match self.masked {
            Some(true) if !masked => return Err(ScanError::Unmasked),
            Some(false) if masked => return Err(ScanError::Masked),
            _ => {}
        }
        let mask = masked.then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            len,
            header_len: self.hdr_len,
        };
        match opcode {
            OP_CONT => {
                if !self.in_message {
                    return Err(ScanError::UnexpectedContinuation);
                }
                self.message_len = self.message_len.saturating_add(len);
            }
            OP_TEXT | OP_BINARY => {
                if self.in_message {
                    return Err(ScanError::UnfinishedMessage);
                }
                self.in_message = true;
                self.message_len = len;
            }
            OP_CLOSE | OP_PING | OP_PONG => {
                if len > 125 {
                    return Err(ScanError::ControlTooLong(len));
                }
                if !fin {
                    return Err(ScanError::FragmentedControl);
                }
            }
            op => return Err(ScanError::ReservedOpcode(op)),
        }
        Ok(header)
    }

    fn feed_payload(&mut self, input: &[u8]) -> (usize, Option<Event>) {
        let Some(h) = self.cur else {
            // Unreachable by construction: Payload is only entered with a header.
            self.state = State::Header;
            return (0, None);
        };
        let take = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        if h.opcode == OP_CLOSE {
            for (i, b) in input[..take].iter().enumerate() {
                let at = self.offset + i as u64;
                if at >= 2 {
                    break;
                }
                let k = h.mask.map_or(0, |m| m[(at % 4) as usize]);
                self.close_code[at as usize] = b ^ k;
            }
        }
        self.remaining -= take as u64;
        self.offset += take as u64;
        if self.remaining > 0 {
            return (take, None);
        }
        let close_code =
            (h.opcode == OP_CLOSE && h.len >= 2).then(|| u16::from_be_bytes(self.close_code));
        let message_done = !h.is_control() && h.fin;
        if message_done {
            self.in_message = false;
        }
        self.state = State::Header;
        self.hdr_len = 0;
        self.cur = None;
        (
            take,
            Some(Event::End(FrameEnd {
                header: h,
                close_code,
                message_done,
            })),
        )
    }
}

/// Writes a complete single frame (FIN set) with a payload of at most 125 bytes
/// into `out`, masked with `mask` when given (frames toward an upstream server).
/// Returns the frame's length.
pub fn write_control(
    out: &mut [u8; MAX_HEADER + 125],
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> usize {
    let n = payload.len().min(125);
    out[0] = 0x80 | (opcode & 0x0f);
    out[1] = n as u8;
    let mut at = 2;
    if let Some(k) = mask {
        out[1] |= 0x80;
        out[2..6].copy_from_slice(&k);
        at = 6;
    }
    for (i, b) in payload[..n].iter().enumerate() {
        out[at + i] = b ^ mask.map_or(0, |k| k[i % 4]);
    }
    at + n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, op: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | op];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if let Some(k) = mask {
            f.extend_from_slice(&k);
        }
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask.map_or(0, |k| k[i % 4])),
        );
        f
    }

    fn ends(s: &mut Scanner, mut input: &[u8]) -> Vec<FrameEnd> {
        let mut out = Vec::new();
        loop {
            let (n, ev) = s.feed(input);
            input = &input[n..];
            match ev {
                Some(Event::End(e)) => out.push(e),
                Some(Event::Error(e)) => panic!("{e}"),
                Some(Event::Header(_)) => {}
                None => return out,
            }
        }
    }

    #[test]
    fn byte_by_byte_fragmented_message_and_masked_close_code() {
        let mut wire = frame(false, OP_TEXT, b"hel", Some([9, 8, 7, 6]));
        wire.extend(frame(true, OP_PING, b"", None));
        wire.extend(frame(true, OP_CONT, &[b'x'; 300], Some([1, 2, 3, 4])));
        wire.extend(frame(
            true,
            OP_CLOSE,
            &[0x03, 0xf1, b'b', b'y'],
            Some([5, 6, 7, 8]),
        ));
        let mut s = Scanner::new();
        let mut all = Vec::new();
        let mut max_msg = 0;
        for b in &wire {
            all.extend(ends(&mut s, std::slice::from_ref(b)));
            max_msg = max_msg.max(s.message_len());
        }
        assert!(s.at_boundary());
        let ops: Vec<u8> = all.iter().map(|e| e.header.opcode).collect();
        assert_eq!(ops, vec![OP_TEXT, OP_PING, OP_CONT, OP_CLOSE]);
        assert!(all[2].message_done && !all[0].message_done);
        assert_eq!(max_msg, 303);
        assert_eq!(all[3].close_code, Some(1009));
    }

    #[test]
    fn reports_protocol_errors() {
        let mut s = Scanner::new();
        let (_, ev) = s.feed(&frame(true, OP_CONT, b"x", None));
        assert_eq!(ev, Some(Event::Error(ScanError::UnexpectedContinuation)));
        let mut s = Scanner::new();
        let (_, ev) = s.feed(&frame(false, OP_PING, b"x", None));
        assert_eq!(ev, Some(Event::Error(ScanError::FragmentedControl)));
        let mut s = Scanner::new();
        let (_, ev) = s.feed(&[0x83, 0]);
        assert_eq!(ev, Some(Event::Error(ScanError::ReservedOpcode(3))));
    }

    #[test]
    fn control_frames_round_trip() {
        let mut buf = [0u8; MAX_HEADER + 125];
        let n = write_control(
            &mut buf,
            OP_CLOSE,
            &1001u16.to_be_bytes(),
            Some([1, 2, 3, 4]),
        );
        let e = ends(&mut Scanner::new(), &buf[..n]);
        assert_eq!(e[0].close_code, Some(1001));
        assert_eq!(e[0].header.mask, Some([1, 2, 3, 4]));
    }
}
