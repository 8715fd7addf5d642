//! The WebSocket frame wire format as the load clients and `ws-server` see it:
//! masked client frames built once with a fixed key, the 8-byte send
//! timestamp re-masked in place, complete frames parsed out of a read buffer,
//! and the byte search the handshakes and parsers share.

pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A masked client frame; returns it with the offset of its payload.
pub fn client_frame(opcode: u8, payload: &[u8]) -> (Vec<u8>, usize) {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&MASK);
    let off = f.len();
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    (f, off)
}

/// Writes the masked timestamp into the first 8 payload bytes of a template frame.
pub fn stamp(frame: &mut [u8], off: usize, ts: u64) {
    for (i, b) in ts.to_le_bytes().iter().enumerate() {
        frame[off + i] = b ^ MASK[i % 4];
    }
}

/// One complete frame at the start of `buf`: (opcode, payload range, total length).
pub fn parse_frame(buf: &[u8]) -> Option<(u8, usize, usize, Option<[u8; 4]>)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut off) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let mask = if masked {
        if buf.len() < off + 4 {
            return None;
        }
        let m = [buf[off], buf[off + 1], buf[off + 2], buf[off + 3]];
        off += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < off + len {
        return None;
    }
    Some((opcode, off, off + len, mask))
}
