//! An upstream's final answer other than `101` to a WebSocket upgrade,
//! relayed to the client as nginx and HAProxy relay it. A server that
//! refuses (401, 403, 404, 429...) has said what it means: the client hears
//! it, with its fields and body, and the server is not counted as failing
//! (passive health counts failures to answer, not answers). Before, every
//! such answer was a 502 and a failure, so a few unauthenticated upgrades to
//! a path the server does not have took a healthy pool down.
//!
//! The body is read whole, up to [`MAX_BODY`], within what is left of the
//! handshake's `response_timeout`: refusals are short, and the connection is
//! not kept. One that cannot be read so is a 502, still not a failure of the
//! server's: it answered.

use http::{header, Response};
use http_body_util::{BodyExt, Limited};

use super::error::ProxyError;
use super::headers::strip_hop_by_hop;
use crate::body::Body;
use crate::upstream::dial::UpStream;
use crate::upstream::h1::Conn;

/// The largest refusal body relayed (a larger one is a 502).
pub const MAX_BODY: usize = 64 * 1024;

/// The client's answer: the server's status, end-to-end fields and body.
/// `read` holds the complete response head the handshake read, and what
/// followed it.
pub async fn relay(
    stream: UpStream,
    read: &[u8],
    deadline: tokio::time::Instant,
    addr: &str,
) -> Result<Response<Body>, ProxyError> {
    let failed = |why: String| ProxyError::UpstreamFailed(addr.to_string(), why);
    let answer = async {
        let resp = Conn::answer(stream, read)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let (mut parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| failed(format!("the body of its refusal of the upgrade: {e}")))?
            .to_bytes();
        strip_hop_by_hop(&mut parts.headers);
        // Framed anew for the client, who may be on HTTP/2.
        parts.headers.remove(header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, crate::body::full(body)))
    };
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(r) => r,
        Err(_) => Err(ProxyError::UpstreamTimeout(addr.to_string())),
    }
}
