//! Request handling: the [`Proxy`] handler that `server` serves. Per request:
//! find the route, pass the route's access phase ([`access_phase`]), then
//! dispatch to the WebSocket path ([`ws`]), the HTTP reverse proxy
//! ([`http`]), an app, or static files ([`files`]). Failures become responses
//! in exactly one place ([`error::ProxyError::into_response`]). Before
//! routing, a plain-HTTP `GET` for a pending ACME http-01 token is answered
//! from [`crate::acme::Challenges`] (an unknown token is routed as usual).
//!
//! [`Table`] is everything derived from one config that a request needs
//! (routes, their access phases, upstream pools, echo settings); the process
//! swaps it whole on reload and a request keeps the one it started with.

pub mod access_phase;
pub mod auth_request;
pub mod authn;
pub mod client_addr;
mod client_body;
pub mod error;
pub mod files;
pub mod forwarded;
mod head_checks;
pub mod headers;
pub mod http;
pub mod inspect;
mod inspect_config;
pub mod kernel_pipe;
pub mod path;
pub mod phases;
pub mod rate_limit;
pub mod scan;
pub mod splice;
pub mod upload;
pub mod ws;
mod ws_refused;
pub mod ws_upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::body::RequestBody;
use ::http::uri::Authority;
use ::http::{header, HeaderValue, Request, Response, Version};
use arc_swap::ArcSwap;

use self::access_phase::{Head, Notes, Phase};
use self::http::ProxyBody;
use self::path::PathCheck;
use crate::access::{Access, BytesIn, ErrorDetail, LimitedBy, LoggedBody, RequestInfo};
use crate::apps::Apps;
use crate::auth::Verifiers;
use crate::body::Body;
use crate::config::{AppKind, Config, EchoConfig, RouteTarget, TrustedProxies};
use crate::ctx::{ClientAddr, ConnCtx};
use crate::limit::Registry;
use crate::limits::ConnSlot;
use crate::router::{Route, Router};
use crate::server::Handler;
use crate::shutdown::Shutdown;
use crate::upstream::Pool;
pub use error::{HandshakeError, ProxyError};

/// What requests need from one config. Built by the composition root, which
/// also builds the pools (carrying health over from the previous table).
pub struct Table {
    pub router: Router,
    /// The access phase of each route, by [`Route::id`].
    phases: Vec<Phase>,
    pub pools: HashMap<String, Arc<Pool>>,
    /// The pool of each route that proxies to one, by [`Route::id`]: found
    /// by index per request instead of by hashing the upstream's name.
    route_pools: Vec<Option<Arc<Pool>>>,
    pub echo: EchoConfig,
    /// `[server] trusted_proxies`: whose `X-Forwarded-For` is believed.
    pub trusted: TrustedProxies,
    /// `[server] underscores_in_headers`.
    underscores: bool,
    /// Headers no client may send on any route: every route's
    /// `auth_claims_to_headers` names (`None` when there are none).
    identity_headers: Option<Arc<[::http::HeaderName]>>,
    /// `server.max_connections` and `max_connections_per_ip`, which every
    /// HTTP/2 WebSocket session counts against.
    caps: (usize, usize),
}

impl Table {
    /// `limits` holds the `[limit.NAME]`s routes name (the composition root
    /// keeps it across reloads).
    pub fn new(cfg: &Config, pools: HashMap<String, Arc<Pool>>, limits: &Registry) -> Self {
        let verifiers = Verifiers::new(&cfg.auth);
        let mut identity: Vec<::http::HeaderName> = cfg
            .routes
            .iter()
            .filter_map(|r| r.auth.as_ref())
            .flat_map(|a| a.claims_to_headers.iter().map(|(h, _)| h.clone()))
            .collect();
        identity.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        identity.dedup();
        Self {
            router: Router::new(&cfg.routes),
            phases: cfg
                .routes
                .iter()
                .map(|r| phases::for_route(r, limits, &verifiers, &pools))
                .collect(),
            route_pools: cfg
                .routes
                .iter()
                .map(|r| match &r.target {
                    RouteTarget::Upstream(name) => pools.get(name).cloned(),
                    _ => None,
                })
                .collect(),
            pools,
            echo: cfg.echo.clone(),
            trusted: cfg.server.trusted_proxies.clone(),
            underscores: cfg.server.underscores_in_headers,
            identity_headers: (!identity.is_empty()).then(|| identity.into()),
            caps: (
                cfg.server.max_connections,
                cfg.server.max_connections_per_ip,
            ),
        }
    }

    /// The route's phase, unless it has no filter and there is nothing to
    /// strip (then the phase is skipped).
    fn phase(&self, route: &Route) -> Option<&Phase> {
        self.phases.get(route.id).filter(|p| !p.is_empty())
    }

    /// The pool of `route`, found by the route's index (never missing for a
    /// route to an upstream: the config is checked for it).
    fn pool(&self, route: &Route) -> Result<&Arc<Pool>, ProxyError> {
        self.route_pools
            .get(route.id)
            .and_then(Option::as_ref)
            .ok_or_else(|| ProxyError::Internal(format!("no pool for route {}", route.label)))
    }
}

/// The handler state: the swappable table and the process-wide parts a
/// request may use.
pub struct Proxy {
    table: ArcSwap<Table>,
    access: Arc<Access>,
    shutdown: Shutdown,
    apps: Arc<Apps>,
    /// Pending ACME http-01 answers.
    acme: Arc<crate::acme::Challenges>,
}

impl Proxy {
    pub fn new(
        table: Arc<Table>,
        access: Arc<Access>,
        shutdown: Shutdown,
        apps: Arc<Apps>,
        acme: Arc<crate::acme::Challenges>,
    ) -> Self {
        Self {
            table: ArcSwap::new(table),
            access,
            shutdown,
            apps,
            acme,
        }
    }

    /// The table requests use now.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Installs a new table: requests that start from now on use it.
    pub fn swap(&self, table: Arc<Table>) {
        self.table.store(table);
    }
}

impl Handler for Proxy {
    /// Every response leaves through here, so this is where the access line
    /// is attached.
    async fn handle(
        &self,
        mut req: Request<RequestBody>,
        conn: Arc<ConnCtx>,
        slot: Arc<ConnSlot>,
    ) -> Response<Body> {
        let started = Instant::now();
        let table = self.table.load_full();
        if !table.underscores {
            // Before anything reads a field: the client-address step, the
            // access phase, callouts, tunnels and apps all see the same set.
            headers::drop_underscored(req.headers_mut());
        }
        let log = self.access.logging();
        // Only a body has bytes to count: a bodiless request (most) would
        // otherwise allocate the counter, and its extensions' map, for a count
        // that stays 0.
        let bytes_in = (!http_body::Body::is_end_stream(req.body())).then(|| {
            let b = BytesIn::default();
            req.extensions_mut().insert(b.clone());
            b
        });
        // The access phase's first step, before routing so that every access
        // line (a 404 too) names the real client: the client of this request.
        let client = match table.trusted.contains(conn.client.ip()) {
            false => conn.client.ip(),
            true => {
                let ip = client_addr::resolve(req.headers(), conn.client.ip(), &table.trusted);
                req.extensions_mut().insert(ClientAddr(ip));
                ip
            }
        };
        let method = req.method().clone();
        // Copied for the access line only: most deployments that need speed log less.
        let path = if log {
            req.uri().path().to_string()
        } else {
            String::new()
        };
        let host = request_host(&req);
        let grpc = crate::grpc_reply::is_grpc(&req);
        let mut out = Outcome::default();
        let resp = match self
            .dispatch(&table, &conn, slot, req, host.as_ref(), &mut out)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(error = %e, side = ?e.side(), "request failed");
                local(e.into_response_for(grpc))
            }
        };
        let (parts, body) = resp.into_parts();
        let info = RequestInfo {
            client,
            method,
            host: match (&host, log) {
                (Some(h), true) => h.as_str().to_string(),
                _ => String::new(),
            },
            path,
            route: out.route,
            log,
            upstream: out.upstream,
            error: parts.extensions.get::<ErrorDetail>().map(|e| e.0.clone()),
            limit: parts.extensions.get::<LimitedBy>().map(|l| l.0.clone()),
            status: match parts.extensions.get::<crate::grpc_reply::HttpStatus>() {
                Some(s) => s.0.as_u16(),
                None => parts.status.as_u16(),
            },
            bytes_in,
            started,
        };
        Response::from_parts(parts, LoggedBody::wrap(self.access.clone(), body, info))
    }
}

/// Replaces the request's path (its query kept) with `path::check`'s
/// normalized one.
fn set_path<B>(req: &mut Request<B>, path: &str) -> Result<(), ProxyError> {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(
        ::http::uri::PathAndQuery::try_from(pq)
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?,
    );
    *req.uri_mut() =
        ::http::Uri::from_parts(parts).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    Ok(())
}

/// Refuses a path that, read as some upstreams read it (escaped separators
/// as `/`, `;parameters` dropped: [`path::upstream_view`]), would take
/// another route than the path as sent: the access phase and upstream of one
/// route would serve what the other route guards.
fn same_route_decoded(
    table: &Table,
    host: Option<&Host>,
    path: &str,
    route: &Arc<Route>,
    listener: std::net::SocketAddr,
) -> Result<(), ProxyError> {
    let Some(view) = path::upstream_view(path) else {
        return Ok(());
    };
    match table.router.find(host.map(Host::as_str), &view, listener) {
        Some(other) if Arc::ptr_eq(other, route) => Ok(()),
        _ => Err(ProxyError::BadRequest(
            "an escaped slash (%2F or %5C) or a ;parameter in the path changes its route".into(),
        )),
    }
}

/// Counts a WebSocket handshake's outcome. A refusal the upstream answered
/// is relayed as a response, but counted under its status
/// (docs/operations.md), not as `ok`. Out of line: `dispatch`, inlined into
/// every request's handler, stays as small as it was.
#[inline(never)]
fn count_handshake(
    metrics: &crate::metrics::Metrics,
    route: &Route,
    result: &Result<Response<Body>, ProxyError>,
) {
    let outcome = match result {
        Ok(r) if r.status().is_informational() || r.status().is_success() => Ok(()),
        Ok(r) => Err(r.status().as_u16()),
        Err(e) => Err(e.status().as_u16()),
    };
    route.metrics.handshake(metrics, &route.label, outcome);
}

/// A response answered here rather than by an upstream server.
fn local(resp: Response<Body>) -> Response<ProxyBody> {
    resp.map(http_body_util::Either::Right)
}

/// What the access line learns while a request is dispatched: out-values
/// rather than response extensions, whose map would be allocated per response.
#[derive(Default)]
struct Outcome {
    /// The route that matched.
    route: Option<Arc<Route>>,
    /// The upstream server that answered.
    upstream: Option<Arc<str>>,
}

impl Proxy {
    async fn dispatch(
        &self,
        table: &Arc<Table>,
        conn: &Arc<ConnCtx>,
        slot: Arc<ConnSlot>,
        mut req: Request<RequestBody>,
        host: Option<&Host>,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upgrade = ws::is_upgrade_attempt(&req);
        if host.is_none() && (upgrade || req.version() == Version::HTTP_11) {
            return Err(if upgrade {
                HandshakeError::MissingHost.into()
            } else {
                ProxyError::MissingHost
            });
        }
        if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
            // RFC 9112 §3.2 (HTTP/1.1 is refused earlier, by server::smuggle);
            // HTTP/2 requests reach here with their fields as sent.
            return Err(ProxyError::BadRequest("more than one Host header".into()));
        }
        if req.version() == Version::HTTP_2 {
            head_checks::repeated_single_field(req.headers())?;
        }
        if let Some(h) = host {
            // `Host`, HTTP/2's `:authority` or an absolute-form target's:
            // each must be a host and port, without userinfo.
            if !path::valid_host(h.as_bytes()) {
                return Err(ProxyError::BadRequest(
                    "the Host header (or :authority) is not a valid host[:port]".into(),
                ));
            }
        }
        if req.version() == Version::HTTP_2 && head_checks::host_contradicts_authority(&req) {
            // RFC 9113 §8.3.1: routed by `:authority`, the upstream would
            // otherwise be told one host and an access rule checked another.
            return Err(ProxyError::BadRequest(
                "the Host header and :authority differ".into(),
            ));
        }
        if !conn.tls && req.method() == ::http::Method::GET {
            if let Some(answer) = self.acme.http01(req.uri().path()) {
                return Ok(local(crate::body::text_response(
                    ::http::StatusCode::OK,
                    answer,
                )));
            }
        }
        let escaped = match path::check(req.uri().path()) {
            PathCheck::Plain => false,
            PathCheck::Fine => true,
            PathCheck::Refused(why) => return Err(ProxyError::BadRequest(why.into())),
            PathCheck::Normalized(p) => {
                set_path(&mut req, &p)?;
                true
            }
        };
        let route = table
            .router
            .find(host.map(Host::as_str), req.uri().path(), conn.listener)
            .cloned()
            .ok_or(ProxyError::NoRoute)?;
        if escaped {
            same_route_decoded(table, host, req.uri().path(), &route, conn.listener)?;
        }
        out.route = Some(route.clone());
        if upgrade {
            // Not boxed here: `upgrade` boxes the tunnel, the only part of it
            // larger than the plain path's own state.
            let result = self
                .upgrade(table, &route, conn, slot, req, &mut out.upstream)
                .await;
            count_handshake(self.access.metrics(), &route, &result);
            return result.map(local);
        }
        let notes = self.access_phase(table, &route, conn, &req, false).await?;
        notes.identify(req.extensions_mut());
        let cfg = &route.cfg;
        match &cfg.target {
            RouteTarget::Upstream(_) => {
                let pool = table.pool(&route)?;
                let host = host.map(Host::as_str);
                let fwd = http::Forward {
                    metrics: self.access.metrics(),
                    route: cfg,
                    conn,
                    host,
                    notes: &notes,
                    served_by: &mut out.upstream,
                };
                http::forward(pool, fwd, req).await
            }
            RouteTarget::App(AppKind::Echo) => Err(ProxyError::UpgradeRequired),
            RouteTarget::App(AppKind::Chat) => {
                let client = crate::ctx::client_ip(&req, conn);
                Ok(local(self.apps.chat.http(req, &cfg.path, client).await?))
            }
            RouteTarget::Static(root) => files::serve(root, cfg, &req).await.map(local),
        }
    }

    /// A WebSocket handshake: validated first (a malformed one is a 400
    /// whatever the route), then the access phase, then its handler. One
    /// handled while the gateway drains was on its way before the listeners
    /// stopped (a binary upgrade): it is accepted, and its session drained
    /// like the others (docs/operations.md, Draining).
    async fn upgrade(
        &self,
        table: &Arc<Table>,
        route: &Arc<Route>,
        conn: &Arc<ConnCtx>,
        slot: Arc<ConnSlot>,
        mut req: Request<RequestBody>,
        served_by: &mut Option<Arc<str>>,
    ) -> Result<Response<Body>, ProxyError> {
        let hs = ws::validate(&req)?;
        let notes = self.access_phase(table, route, conn, &req, true).await?;
        let client = crate::ctx::client_ip(&req, conn);
        // Over HTTP/2 a session is a stream of a connection that may carry
        // many: each holds a slot of its own (its connection holds one too).
        let slot = if hs.h2 {
            let (max, per_ip) = table.caps;
            Arc::new(
                slot.admit_another(conn.client.ip(), max, per_ip)
                    .map_err(ProxyError::Capacity)?,
            )
        } else {
            slot
        };
        notes.identify(req.extensions_mut());
        if matches!(route.cfg.target, RouteTarget::App(_)) {
            // An app reads the request itself: it sees what an upstream would
            // (no spoofed identity headers, no `bearer.` subprotocol).
            notes.apply(req.headers_mut());
        }
        let session = ws::Session {
            access: &self.access,
            shutdown: &self.shutdown,
            route,
            conn,
            client,
            slot,
        };
        match &route.cfg.target {
            RouteTarget::App(AppKind::Echo) => {
                let hold = session.hold("app");
                Ok(crate::apps::echo::accept(
                    &self.shutdown,
                    &self.apps.budget,
                    &table.echo,
                    req,
                    hold,
                )?)
            }
            RouteTarget::App(AppKind::Chat) => {
                // Chat counts its own traffic in its hub; the session line gives
                // duration and presence of the session.
                let mut hold = session.hold("app");
                hold.log.counts_messages = false;
                Ok(self.apps.chat.accept(req, &route.cfg.path, hold, client)?)
            }
            RouteTarget::Upstream(_) => {
                let pool = table.pool(route)?.clone();
                let tunnel = ws::Tunnel {
                    session,
                    metrics: self.access.metrics(),
                    notes: &notes,
                    served_by,
                };
                // Boxed: the tunnel's future is kilobytes, and every request's
                // future would otherwise carry (and move) its space.
                Box::pin(tunnel.open(pool, req, hs)).await
            }
            RouteTarget::Static(_) => Err(ProxyError::WebSocketDisabled),
        }
    }

    /// Runs the route's access phase; a route without filters costs a lookup.
    async fn access_phase(
        &self,
        table: &Table,
        route: &Route,
        conn: &ConnCtx,
        req: &Request<RequestBody>,
        upgrade: bool,
    ) -> Result<Notes, ProxyError> {
        let mut notes = match table.phase(route) {
            None => Notes::default(),
            Some(phase) => {
                let head = Head {
                    req,
                    route,
                    conn,
                    upgrade,
                    metrics: self.access.metrics(),
                    identity_headers: table.identity_headers.as_deref().unwrap_or_default(),
                    user: None,
                };
                phase.run(&head).await?
            }
        };
        // `handle` put the resolved client there exactly when the connection's
        // client is a trusted proxy: no second walk over trusted_proxies.
        notes.trusted_peer = req.extensions().get::<ClientAddr>().is_some();
        notes.strip = table.identity_headers.clone();
        Ok(notes)
    }
}

/// The host a request names: the `Host` header (HTTP/1.1) or the URI
/// authority (HTTP/2 `:authority`, absolute-form HTTP/1.1). Both are views
/// of buffers hyper already holds, so taking one copies nothing.
#[derive(Debug, Clone)]
pub enum Host {
    Header(HeaderValue),
    Authority(Authority),
}

impl Host {
    /// The bytes, without the UTF-8 check `as_str` makes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Host::Header(v) => v.as_bytes(),
            Host::Authority(a) => a.as_str().as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            // `request_host` only keeps header values that are valid str.
            Host::Header(v) => v.to_str().unwrap_or(""),
            Host::Authority(a) => a.as_str(),
        }
    }
}

/// The request's host, if it names one.
pub fn request_host<B>(req: &Request<B>) -> Option<Host> {
    if let Some(a) = req.uri().authority() {
        return Some(Host::Authority(a.clone()));
    }
    req.headers()
        .get(header::HOST)
        .filter(|h| !h.is_empty() && h.to_str().is_ok())
        .map(|h| Host::Header(h.clone()))
}
