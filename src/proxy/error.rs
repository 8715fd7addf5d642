//! Every way a request can fail, and the one place that maps each to a status
//! code and a short plain-text reason for the client.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::access::{ErrorDetail, LimitedBy};
use crate::apps::chat::protocol::{ChatError, Event};
use crate::apps::error::AppError;
use crate::auth::AuthError;
use crate::body::{full, text_response, Body};

/// Why a WebSocket opening handshake was rejected (RFC 6455 §4.2.1; docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("a WebSocket upgrade must use GET, not {0}")]
    Method(String),
    #[error("a WebSocket upgrade needs HTTP/1.1 or later")]
    HttpVersion,
    #[error("missing Host header")]
    MissingHost,
    #[error("the Connection header must contain the \"upgrade\" token")]
    ConnectionNotUpgrade,
    #[error("missing Sec-WebSocket-Key header")]
    MissingKey,
    #[error("Sec-WebSocket-Key must be the base64 encoding of exactly 16 bytes")]
    BadKey,
    #[error("unsupported Sec-WebSocket-Version: only 13 is supported")]
    BadVersion,
    #[error("extended CONNECT with :protocol {} is not supported (only \"websocket\")", crate::quoted::Quoted(.0))]
    UnsupportedProtocol(String),
    /// Bytes after the head would be read as the first WebSocket frames.
    #[error(
        "a WebSocket handshake carries no body (no Transfer-Encoding, no Content-Length but 0)"
    )]
    Body,
}

/// An auth service's refusal (401 or 403), relayed to the client as it was
/// given: the status, its `WWW-Authenticate` and `Content-Type`, and a small
/// body (`proxy::auth_request` keeps only what it relays).
#[derive(Debug, Clone)]
pub struct AuthDenial {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Which side of the proxy an error came from, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Gateway,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this host and path")]
    NoRoute,
    #[error("missing Host header")]
    MissingHost,
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("WebSocket is disabled on this route")]
    WebSocketDisabled,
    #[error("Origin {} is not allowed on this route", crate::quoted::Quoted(.0))]
    OriginNotAllowed(String),
    #[error("this endpoint only accepts WebSocket upgrades")]
    UpgradeRequired,
    #[error("no upstream server is available")]
    NoUpstream,
    /// Every server of the pool that is up is at its `max_conns` (503).
    #[error("every server of upstream {0} is at its max_conns")]
    UpstreamFull(String),
    #[error("upstream {0} refused or failed the connection")]
    UpstreamConnect(String),
    #[error("upstream {0} timed out")]
    UpstreamTimeout(String),
    /// A connect to the server failed for want of the gateway's own
    /// resources (`dial::is_local_shortage`): the node is full, not the server down.
    #[error("no local socket for upstream {0}: {1}")]
    OutOfSockets(String, String),
    /// The TLS handshake with the server failed (untrusted certificate, wrong
    /// name, refused client certificate...): the reason is for the debug log.
    #[error("upstream {0}: {1}")]
    UpstreamTls(String, String),
    #[error("upstream {0} failed: {1}")]
    UpstreamFailed(String, String),
    #[error("upstream {0} did not accept the WebSocket handshake: {1}")]
    UpstreamHandshake(String, String),
    #[error("upstream {0} switched protocols on a request that was not a WebSocket handshake")]
    UnexpectedUpgrade(String),
    #[error("the client went away before its request body was complete")]
    ClientAborted,
    /// The upstream waited `response_timeout` for more of the client's body (408).
    #[error("the request body stopped arriving")]
    ClientBodyTimeout,
    #[error("not found")]
    NotFound,
    #[error("forbidden")]
    Forbidden,
    /// No valid token (401). The text says which check failed: for the
    /// debug log only, the client is told less ([`ProxyError::client_message`]).
    #[error("authentication failed: {0}")]
    Auth(AuthError),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A static file's `If-Match` or `If-Unmodified-Since` failed (412).
    #[error("precondition failed")]
    PreconditionFailed,
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A request feature the gateway does not implement (501).
    #[error("not implemented: {0}")]
    NotImplemented(String),
    /// An HTTP/2 WebSocket session over `server.max_connections` (503) or
    /// `max_connections_per_ip` (429): each counts as a connection.
    #[error("{}", match .0 {
        crate::limits::Refusal::Full => "the gateway is at its connection limit; try again shortly",
        crate::limits::Refusal::PerIp => "too many connections from this address",
    })]
    Capacity(crate::limits::Refusal),
    /// Over a `[limit.NAME]`: 429 with `Retry-After` (whole seconds, rounded up).
    #[error("too many requests (limit {limit}): retry after {}s", crate::limit::gcra::retry_after_secs(*retry_after))]
    RateLimited {
        limit: std::sync::Arc<str>,
        retry_after: std::time::Duration,
    },
    #[error("the auth service denied the request ({})", .0.status)]
    AuthDenied(Box<AuthDenial>),
    #[error("auth service unavailable: {0}")]
    AuthUnavailable(String),
    #[error(transparent)]
    App(#[from] AppError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// Why a pool gave no server, as the client's answer.
    pub fn unavailable(why: crate::upstream::Unavailable, pool: &crate::upstream::Pool) -> Self {
        match why {
            crate::upstream::Unavailable::Down => ProxyError::NoUpstream,
            crate::upstream::Unavailable::Full => ProxyError::UpstreamFull(pool.name().to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute | ProxyError::NotFound => StatusCode::NOT_FOUND,
            ProxyError::MissingHost | ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Handshake(h) => match h {
                HandshakeError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
                HandshakeError::BadVersion => StatusCode::UPGRADE_REQUIRED,
                _ => StatusCode::BAD_REQUEST,
            },
            ProxyError::WebSocketDisabled
            | ProxyError::OriginNotAllowed(_)
            | ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            ProxyError::Auth(_) => StatusCode::UNAUTHORIZED,
            ProxyError::NoUpstream
            | ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTls(..)
            | ProxyError::UpstreamFailed(..) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamHandshake(..) | ProxyError::UnexpectedUpgrade(_) => {
                StatusCode::BAD_GATEWAY
            }
            // nginx's 499: nobody reads it, the access line shows it.
            ProxyError::ClientAborted => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ProxyError::RateLimited { .. }
            | ProxyError::Capacity(crate::limits::Refusal::PerIp) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Capacity(crate::limits::Refusal::Full) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::AuthUnavailable(_)
            | ProxyError::OutOfSockets(..)
            | ProxyError::UpstreamFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::AuthDenied(d) => d.status,
            ProxyError::App(AppError::NotFound) => StatusCode::NOT_FOUND,
            ProxyError::App(AppError::Upgrade(_)) => StatusCode::BAD_REQUEST,
            ProxyError::App(AppError::Chat(e)) => chat_status(e),
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoUpstream
            | ProxyError::UpstreamFull(_)
            | ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamTls(..)
            | ProxyError::UpstreamFailed(..)
            | ProxyError::UpstreamHandshake(..)
            | ProxyError::UnexpectedUpgrade(_)
            | ProxyError::AuthUnavailable(_) => Side::Upstream,
            ProxyError::Internal(_) | ProxyError::OutOfSockets(..) => Side::Gateway,
            _ => Side::Client,
        }
    }

    /// What the client is told. Upstream failures name no server address and
    /// carry no transport detail (those are the gateway's internals); the
    /// full [`Display`](std::fmt::Display) text goes to the debug log and the
    /// access line.
    pub fn client_message(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            ProxyError::UpstreamConnect(_) => Cow::Borrowed("upstream server unavailable"),
            ProxyError::UpstreamTimeout(_) => Cow::Borrowed("upstream server timed out"),
            ProxyError::UpstreamFailed(..)
            | ProxyError::UpstreamTls(..)
            | ProxyError::UnexpectedUpgrade(_) => Cow::Borrowed("upstream server failed"),
            ProxyError::UpstreamHandshake(_, why) => Cow::Owned(format!(
                "upstream server did not accept the WebSocket handshake: {why}"
            )),
            ProxyError::Internal(_) => Cow::Borrowed("internal error"),
            ProxyError::OutOfSockets(..) => {
                Cow::Borrowed("the gateway is out of connections; try again shortly")
            }
            ProxyError::UpstreamFull(_) => Cow::Borrowed(
                "the upstream servers are at their connection limit; try again shortly",
            ),
            ProxyError::Auth(AuthError::Missing) => Cow::Borrowed("authentication required"),
            ProxyError::Auth(_) => Cow::Borrowed("invalid token"),
            ProxyError::AuthUnavailable(_) => Cow::Borrowed("authorization service unavailable"),
            other => Cow::Owned(other.to_string()),
        }
    }

    /// The client's answer, in gRPC's form for a gRPC client
    /// ([`crate::grpc_reply`]).
    #[cold]
    pub fn into_response_for(self, grpc: bool) -> Response<Body> {
        if !grpc {
            return self.into_response();
        }
        let message = self.client_message().into_owned();
        crate::grpc_reply::convert(self.into_response(), &message)
    }

    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        if let ProxyError::App(AppError::Chat(e)) = &self {
            return chat_response(status, e);
        }
        if let ProxyError::AuthDenied(d) = self {
            let AuthDenial { headers, body, .. } = *d;
            let mut r = Response::new(full(body));
            *r.status_mut() = status;
            *r.headers_mut() = headers;
            return r;
        }
        let mut resp = text_response(status, format!("{}\n", self.client_message()));
        if matches!(self.side(), Side::Upstream | Side::Gateway) {
            resp.extensions_mut().insert(ErrorDetail(self.to_string()));
        }
        let h = resp.headers_mut();
        match &self {
            ProxyError::Handshake(HandshakeError::BadVersion) => {
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            ProxyError::UpgradeRequired => {
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            ProxyError::Handshake(HandshakeError::Method(_)) => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            // Static files, the one place it is answered (RFC 9110 §15.5.6).
            ProxyError::MethodNotAllowed => {
                h.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ProxyError::Capacity(_) | ProxyError::UpstreamFull(_) => {
                // A cap, not a rate: a slot frees when a session ends.
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::RateLimited { limit, retry_after } => {
                let secs = crate::limit::gcra::retry_after_secs(*retry_after);
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
                resp.extensions_mut().insert(LimitedBy(limit.clone()));
            }
            // RFC 6750 §3: no error code when no credentials were sent.
            ProxyError::Auth(AuthError::Missing) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wsgate\""),
                );
            }
            ProxyError::Auth(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"wsgate\", error=\"invalid_token\""),
                );
            }
            _ => {}
        }
        resp
    }
}

/// The chat's errors by status: its HTTP endpoints answer with them.
fn chat_status(e: &ChatError) -> StatusCode {
    match e {
        ChatError::TooLarge { .. }
        | ChatError::FrameTooLarge { .. }
        | ChatError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ChatError::NotJoined(_)
        | ChatError::Forbidden
        | ChatError::PushDisabled
        | ChatError::RoomForbidden(_)
        | ChatError::ReadOnly
        | ChatError::RefreshOtherUser => StatusCode::FORBIDDEN,
        ChatError::Unauthorized
        | ChatError::TokenMissing
        | ChatError::TokenInvalid
        | ChatError::TokenNamesNoUser => StatusCode::UNAUTHORIZED,
        ChatError::TooManyConnections(_)
        | ChatError::TooManyPollSessions(_)
        | ChatError::RoomsPerAddress(_) => StatusCode::TOO_MANY_REQUESTS,
        ChatError::NotFound | ChatError::UserOffline(_) => StatusCode::NOT_FOUND,
        ChatError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
        ChatError::NoStream(_) => StatusCode::CONFLICT,
        ChatError::TooManyRooms | ChatError::Bus(_) | ChatError::PollSessionsFull => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ChatError::RateLimited | ChatError::MembershipRate => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A chat error as the chat's clients read it: its `error` frame as JSON.
fn chat_response(status: StatusCode, e: &ChatError) -> Response<Body> {
    let mut r = Response::new(full(Event::error(e).json));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match e {
        ChatError::Unauthorized | ChatError::TokenMissing => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wsgate chat\""),
            );
        }
        ChatError::TokenInvalid | ChatError::TokenNamesNoUser => {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wsgate chat\", error=\"invalid_token\""),
            );
        }
        ChatError::TooManyConnections(_)
        | ChatError::TooManyPollSessions(_)
        | ChatError::RoomsPerAddress(_)
        | ChatError::PollSessionsFull
        | ChatError::RateLimited
        | ChatError::MembershipRate
        | ChatError::Bus(crate::apps::chat::bus::BusError::Unavailable(_)) => {
            // Caps free a slot when a session ends, the chat's rates refill
            // within a second or so, and the bus's heartbeat tries Redis
            // again within a heartbeat: a second is a fair first retry.
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        ChatError::MethodNotAllowed(m) => {
            h.insert(header::ALLOW, HeaderValue::from_static(m));
        }
        _ => {}
    }
    r
}
