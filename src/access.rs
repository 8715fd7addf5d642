//! Access logging and traffic metrics: one `access` log line per HTTP request
//! (written when the response body is finished or dropped, so bytes and
//! duration are real) and one per finished WebSocket session, plus the request,
//! byte, message and close-code counters (docs/operations.md lists them).
//! [`Access`] is what this needs from the process: the metrics and whether the
//! access log is on (switched by a reload).

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};
use crate::metrics::{GaugeGuard, Metrics, RouteCode, RouteDirection, RouteStatus};
use crate::router::Route;

/// The metrics and the access-log switch, shared by every request and session.
pub struct Access {
    metrics: std::sync::Arc<Metrics>,
    log: AtomicBool,
}

impl Access {
    pub fn new(metrics: std::sync::Arc<Metrics>, log: bool) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            log: AtomicBool::new(log),
        })
    }

    /// Whether access lines are written (`[log] access_log`).
    pub fn logging(&self) -> bool {
        self.log.load(Ordering::Relaxed)
    }

    /// Applies a reloaded `[log] access_log`.
    pub fn set_logging(&self, on: bool) {
        self.log.store(on, Ordering::Relaxed);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Request-body bytes read so far (set by whoever consumes the body).
#[derive(Clone, Default)]
pub struct BytesIn(pub Arc<AtomicU64>);

/// The full text of an error whose response hides it (upstream details), put
/// in response extensions for the access line.
#[derive(Debug, Clone)]
pub struct ErrorDetail(pub String);

/// The `[limit.NAME]` that refused a request (429), put in response
/// extensions by `proxy::error` for the access line.
#[derive(Debug, Clone)]
pub struct LimitedBy(pub Arc<str>);

/// What the HTTP access line says about a request.
pub struct RequestInfo {
    /// The request's client ([`crate::ctx::client_ip`]).
    pub client: IpAddr,
    pub method: http::Method,
    /// Host and path are only copied when the access log is on (`log`).
    pub host: String,
    pub path: String,
    /// `None` when no route matched (`-` in logs and metrics).
    pub route: Option<Arc<Route>>,
    /// Write the access line (the request's config snapshot decided).
    pub log: bool,
    pub upstream: Option<Arc<str>>,
    /// Why the request failed, when the client was told less.
    pub error: Option<String>,
    /// The limit that refused it, if one did.
    pub limit: Option<Arc<str>>,
    pub status: u16,
    /// `None` for a request without a body: nothing to count, no allocation.
    pub bytes_in: Option<BytesIn>,
    pub started: Instant,
}

/// Wraps a response body: counts bytes out, and on drop writes the access line
/// and records the request metrics. Generic so that a concrete body (the HTTP
/// proxy's upstream body) sits inside it unboxed: one allocation per response,
/// not one per layer.
pub struct LoggedBody<B = Body> {
    inner: B,
    bytes_out: u64,
    info: RequestInfo,
    access: Arc<Access>,
}

impl<B> LoggedBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin + Send + 'static,
{
    pub fn wrap(access: Arc<Access>, inner: B, info: RequestInfo) -> Body {
        use http_body_util::BodyExt;
        LoggedBody {
            inner,
            bytes_out: 0,
            info,
            access,
        }
        .boxed_unsync()
    }
}

impl<B> HttpBody for LoggedBody<B>
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes_out += d.len() as u64;
                }
            }
            Poll::Ready(Some(Err(e))) => body_failed(&mut self.info, e),
            _ => {}
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The status went out already: only the line can say the body was cut
/// short (an upstream that closed or stalled mid-body). Out of line: every
/// proxied request's frames pass the match that leads here.
#[cold]
#[inline(never)]
fn body_failed(info: &mut RequestInfo, e: &BoxError) {
    if info.error.is_none() {
        info.error = Some(format!("response body: {e}"));
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        let i = &self.info;
        let m = self.access.metrics();
        let secs = i.started.elapsed().as_secs_f64();
        let bytes_in = i
            .bytes_in
            .as_ref()
            .map_or(0, |b| b.0.load(Ordering::Relaxed));
        match &i.route {
            Some(r) => r.metrics.request(m, &r.label, i.status),
            None => {
                m.http_requests
                    .get_or_create(&RouteStatus {
                        route: "-".into(),
                        status: i.status,
                    })
                    .inc();
            }
        }
        m.http_duration.observe(secs);
        m.add_bytes("in", bytes_in);
        m.add_bytes("out", self.bytes_out);
        if i.log {
            tracing::info!(
                target: "access",
                kind = "http",
                client = %i.client,
                method = %i.method,
                // Recorded as strings: quoted and escaped in the text format
                // (a client's `"` must not end the field and start another).
                host = i.host.as_str(),
                path = i.path.as_str(),
                route = i.route.as_ref().map_or("-", |r| &*r.label),
                upstream = i.upstream.as_deref().unwrap_or("-"),
                status = i.status,
                error = i.error.as_deref().unwrap_or("-"),
                limit = i.limit.as_deref().unwrap_or("-"),
                bytes_in,
                bytes_out = self.bytes_out,
                duration_ms = (secs * 1000.0).round() as u64,
            );
        }
    }
}

/// Bookkeeping of one WebSocket session: the active-sessions gauge while it
/// lives, and on drop the access line plus message, byte and close-code metrics.
pub struct SessionLog {
    access: Arc<Access>,
    route: Arc<str>,
    /// `app` or `spliced`.
    kind: &'static str,
    client: IpAddr,
    /// The server a spliced session runs to (`-` for apps).
    pub upstream: Option<Arc<str>>,
    started: Instant,
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Close code sent or received, if any.
    pub close_code: Option<u16>,
    /// The close code an inspected splice saw, which counted it in the
    /// metrics itself: for the access line only.
    close_seen: Option<u16>,
    /// Whether message counts are known (apps, inspected splices).
    pub counts_messages: bool,
    /// Closed by a drain (the access line says so).
    drained: bool,
    _active: GaugeGuard,
}

impl SessionLog {
    pub fn new(access: &Arc<Access>, route: &Route, kind: &'static str, client: IpAddr) -> Self {
        Self {
            _active: route.metrics.session(access.metrics(), &route.label),
            access: access.clone(),
            route: route.label.clone(),
            kind,
            client,
            upstream: None,
            started: Instant::now(),
            msgs_in: 0,
            msgs_out: 0,
            bytes_in: 0,
            bytes_out: 0,
            close_code: None,
            close_seen: None,
            counts_messages: kind == "app",
            drained: false,
        }
    }

    /// The close code an inspected splice saw (its metrics already count it).
    pub fn close_seen(&mut self, code: Option<u16>) {
        self.close_seen = code;
    }

    /// Byte totals of a splice, and the message counts of an inspected one
    /// (a byte copy cannot count them): for the access line only, the
    /// inspector counts the metrics itself.
    pub fn record_splice(&mut self, bytes_in: u64, bytes_out: u64, messages: Option<(u64, u64)>) {
        self.bytes_in = bytes_in;
        self.bytes_out = bytes_out;
        if let Some((msgs_in, msgs_out)) = messages {
            self.msgs_in = msgs_in;
            self.msgs_out = msgs_out;
        }
    }

    /// The process's metrics (for counters a session keeps itself).
    pub fn metrics(&self) -> &Metrics {
        self.access.metrics()
    }

    /// The drain closed this session: counted in
    /// `wsgate_drain_closed_total{kind}` and said in the access line.
    pub fn drained(&mut self, kind: &'static str) {
        self.drained = true;
        self.metrics()
            .drain_closed
            .get_or_create(&crate::metrics::DrainKind { kind })
            .inc();
    }

    pub fn message_in(&mut self, len: usize) {
        self.msgs_in += 1;
        self.bytes_in += len as u64;
    }

    pub fn message_out(&mut self, len: usize) {
        self.msgs_out += 1;
        self.bytes_out += len as u64;
    }
}

impl Drop for SessionLog {
    fn drop(&mut self) {
        let m = self.access.metrics();
        if self.counts_messages {
            let (r, msgs_in, msgs_out) = (&self.route, self.msgs_in, self.msgs_out);
            m.ws_messages
                .get_or_create(&RouteDirection {
                    route: r.to_string(),
                    direction: "in",
                })
                .inc_by(msgs_in);
            m.ws_messages
                .get_or_create(&RouteDirection {
                    route: r.to_string(),
                    direction: "out",
                })
                .inc_by(msgs_out);
        }
        if let Some(code) = self.close_code {
            m.ws_close_codes
                .get_or_create(&RouteCode::new(self.route.to_string(), code))
                .inc();
        }
        m.add_bytes("in", self.bytes_in);
        m.add_bytes("out", self.bytes_out);
        if self.access.logging() {
            tracing::info!(
                target: "access",
                kind = "websocket",
                session = self.kind,
                client = %self.client,
                route = %self.route,
                upstream = self.upstream.as_deref().unwrap_or("-"),
                close_code = self.close_code.or(self.close_seen).map(i64::from).unwrap_or(-1),
                drained = self.drained,
                msgs_in = self.msgs_in,
                msgs_out = self.msgs_out,
                bytes_in = self.bytes_in,
                bytes_out = self.bytes_out,
                duration_ms = self.started.elapsed().as_millis() as u64,
            );
        }
    }
}

/// What an app session holds while it lives: the connection's capacity slot and
/// its session bookkeeping.
pub struct SessionHold {
    pub slot: Arc<crate::limits::ConnSlot>,
    pub log: SessionLog,
}

impl SessionHold {
    pub fn new(slot: Arc<crate::limits::ConnSlot>, log: SessionLog) -> Self {
        Self { slot, log }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use http_body_util::BodyExt;

    use super::*;

    /// A body that breaks after its first chunk is logged with the status
    /// already sent and the error that cut it.
    #[test]
    fn a_body_cut_short_is_logged_with_its_error() {
        let frames = futures_util::stream::iter([
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Err(BoxError::from(
                "connection closed before the message completed",
            )),
        ]);
        let info = RequestInfo {
            client: [127, 0, 0, 1].into(),
            method: http::Method::GET,
            host: "a.test\" status=999 x=\"".into(),
            path: "/x".into(),
            route: None,
            log: true,
            upstream: Some("127.0.0.1:9".into()),
            error: None,
            limit: None,
            status: 200,
            bytes_in: None,
            started: Instant::now(),
        };
        let access = Access::new(Arc::new(Metrics::new()), true);
        let body = http_body_util::StreamBody::new(frames);
        let text = crate::logging::tests::logs_of(|| {
            // Read to its error, then dropped: the access line is written.
            let read = LoggedBody::wrap(access, body, info)
                .collect()
                .now_or_never();
            assert!(read.expect("a ready body").is_err());
        });
        assert!(text.contains("status=200"), "{text}");
        // A client's quote cannot add a field.
        assert!(
            text.contains(r#"host="a.test\" status=999 x=\"" path="/x""#),
            "{text}"
        );
        assert!(
            text.contains(
                "error=\"response body: connection closed before the message completed\""
            ),
            "{text}"
        );
        assert!(text.contains("bytes_out=5"), "{text}");
    }
}
