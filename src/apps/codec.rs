//! The WebSocket codec (yawc) as the in-process apps use it: the options for
//! an app's limits, and completing an upgrade. A leaf of `apps`.

use yawc::{DeflateOptions, Options};

/// Starting (and resting) size of the codec's read buffer. yawc defaults to
/// 8 KiB, which was most of an idle session's memory; a larger frame grows the
/// buffer for as long as it takes (a few more reads), then yawc shrinks it back.
const READ_BUFFER: usize = 512;

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

/// Completes an app's upgrade. The codec comes back boxed and out of any
/// `match` scrutinee: an idle session's future would otherwise hold the
/// ~900-byte codec two or three times for the session's whole life.
pub async fn upgraded(
    fut: yawc::UpgradeFut,
    app: &'static str,
) -> Option<Box<yawc::HttpWebSocket>> {
    match fut.await {
        Ok(ws) => Some(Box::new(ws)),
        Err(e) => {
            tracing::debug!(app, error = %e, "upgrade did not complete");
            None
        }
    }
}
