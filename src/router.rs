//! Routing: `(host, path)` → the configured route. Pure and immutable; a reload
//! builds a new table. Rules (docs/config.md, `[[route]]`): a route with a matching host beats any
//! route without one; among those, the longest path prefix wins. A prefix matches
//! on segment boundaries: `/chat` matches `/chat`, `/chat/`, `/chat/x` and
//! `/chat;param` but not `/chatty` (a prefix ending in `/` matches everything
//! under it).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{HostPattern, RouteConfig};
use crate::metrics::RouteMetrics;

/// Index of a route in the table, stable for the table's lifetime.
pub type RouteId = usize;

/// A configured route as requests meet it: its config, plus what would
/// otherwise be rebuilt on every request (its label, its metric handles).
#[derive(Debug)]
pub struct Route {
    /// Its index in the table ([`Router::routes`]), for per-route state kept
    /// beside the table (the proxy's access phases and upstream pools).
    pub id: RouteId,
    pub cfg: Arc<RouteConfig>,
    /// [`RouteConfig::label`], built once.
    pub label: Arc<str>,
    pub metrics: RouteMetrics,
}

impl Route {
    pub fn new(id: RouteId, cfg: RouteConfig) -> Self {
        Self {
            id,
            label: cfg.label().into(),
            cfg: Arc::new(cfg),
            metrics: RouteMetrics::default(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
    /// Whether any route names a host (if none does, hosts are not looked at).
    any_host: bool,
    /// Whether any route names listeners (if none does, neither is looked at).
    any_listeners: bool,
}

/// How well a route matches: host (exact 2, wildcard 1, none 0), path
/// length, held to listeners.
type Rank = (u8, usize, bool);

/// Whether `route` takes requests that arrived on `listener`.
fn on_listener(route: &RouteConfig, listener: SocketAddr) -> bool {
    route.listeners.is_empty() || route.listeners.contains(&listener)
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self {
            any_host: routes.iter().any(|r| r.host.is_some()),
            any_listeners: routes.iter().any(|r| !r.listeners.is_empty()),
            routes: routes
                .iter()
                .cloned()
                .enumerate()
                .map(|(id, r)| Arc::new(Route::new(id, r)))
                .collect(),
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Finds the route for a request that arrived on `listener` (its
    /// configured address). `host` may carry a port and any case.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        listener: SocketAddr,
    ) -> Option<&Arc<Route>> {
        let host = host.filter(|_| self.any_host).map(normalize_host);
        let mut best: Option<(&Arc<Route>, Rank)> = None;
        for route in &self.routes {
            let r = &route.cfg;
            let host_rank = match (&r.host, host.as_deref()) {
                (None, _) => 0,
                (Some(p), Some(h)) if p.matches(h) => match p {
                    HostPattern::Exact(_) => 2,
                    HostPattern::Wildcard(_) => 1,
                },
                (Some(_), _) => continue,
            };
            if !prefix_matches(&r.path, path) || (self.any_listeners && !on_listener(r, listener)) {
                continue;
            }
            // Held to listeners beats shared at the same host and path: a
            // shared route written first must not shadow the route meant
            // for this listener (an mTLS one).
            let rank = (host_rank, r.path.len(), !r.listeners.is_empty());
            if best.as_ref().is_none_or(|(_, b)| rank > *b) {
                best = Some((route, rank));
            }
        }
        best.map(|(r, _)| r)
    }
}

/// Lower-cases and drops the port (`Example.COM:8443` → `example.com`; IPv6
/// literals keep their brackets). Borrows when the name is already in that
/// form, which is most requests: no allocation per request.
pub fn normalize_host(h: &str) -> Cow<'_, str> {
    let h = h.trim();
    let no_port = if h.starts_with('[') {
        h.split_inclusive(']').next().unwrap_or(h)
    } else {
        h.rsplit_once(':').map(|(a, _)| a).unwrap_or(h)
    };
    let name = no_port.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// A `;` ends a segment too: `/app;jsessionid=1` and `/cars;color=red` are
/// under `/app` and `/cars` (Tomcat's and JAX-RS's path parameters), as the
/// upstreams that read them take them.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/')
        || path.len() == prefix.len()
        || matches!(path.as_bytes()[prefix.len()], b'/' | b';')
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANY: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);
    use crate::config::{AppKind, RouteTarget};

    fn route(host: Option<&str>, path: &str, app: AppKind) -> RouteConfig {
        RouteConfig {
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            ..RouteConfig::test_app(path, app)
        }
    }

    #[test]
    fn longest_prefix_and_host_precedence() {
        let r = Router::new(&[
            route(None, "/", AppKind::Echo),
            route(None, "/chat", AppKind::Chat),
            route(Some("*.example.test"), "/", AppKind::Chat),
            route(Some("api.example.test"), "/", AppKind::Echo),
        ]);
        assert_eq!(
            r.find(Some("x"), "/chat/sse", ANY).unwrap().cfg.path,
            "/chat"
        );
        assert_eq!(r.find(Some("x"), "/chatty", ANY).unwrap().cfg.path, "/");
        assert_eq!(r.find(Some("x"), "/chat", ANY).unwrap().cfg.path, "/chat");
        // A path parameter ends the segment, as Tomcat and JAX-RS read it.
        assert_eq!(
            r.find(Some("x"), "/chat;jsessionid=1", ANY)
                .unwrap()
                .cfg
                .path,
            "/chat"
        );
        // A host route beats a longer path without host.
        let w = &r
            .find(Some("a.Example.test:443"), "/chat/x", ANY)
            .unwrap()
            .cfg;
        assert!(w.host.is_some());
        assert_eq!(w.target, RouteTarget::App(AppKind::Chat));
        let e = r.find(Some("API.example.test"), "/chat", ANY).unwrap();
        assert_eq!(
            e.cfg.host,
            Some(HostPattern::Exact("api.example.test".into()))
        );
        assert_eq!(&*e.label, "api.example.test/");
    }

    #[test]
    fn hosts_are_ignored_when_no_route_names_one() {
        let r = Router::new(&[route(None, "/", AppKind::Echo)]);
        assert!(r.find(Some("Any.Host:1"), "/x", ANY).is_some());
        assert!(r.find(None, "/x", ANY).is_some());
    }

    #[test]
    fn no_match() {
        let r = Router::new(&[route(Some("a.test"), "/x", AppKind::Echo)]);
        assert!(r.find(Some("b.test"), "/x", ANY).is_none());
        assert!(r.find(None, "/x", ANY).is_none());
        assert!(r.find(Some("a.test"), "/y", ANY).is_none());
    }

    #[test]
    fn hosts_normalized() {
        assert_eq!(normalize_host("Example.COM:8443"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
    }

    #[test]
    fn a_route_with_listeners_takes_only_their_requests() {
        let a: SocketAddr = "127.0.0.1:8443".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let mut secure = route(Some("secure.test"), "/", AppKind::Echo);
        secure.listeners = vec![a];
        // Written after a shared route of the same host and path: still
        // chosen on its listener.
        let shared = route(Some("secure.test"), "/", AppKind::Chat);
        let r = Router::new(&[shared, secure]);
        let on = |l| {
            r.find(Some("secure.test"), "/x", l)
                .map(|r| r.cfg.target.clone())
        };
        assert!(matches!(on(a), Some(RouteTarget::App(AppKind::Echo))));
        // Elsewhere the route does not exist: the next best takes it.
        assert!(matches!(on(b), Some(RouteTarget::App(AppKind::Chat))));
    }
}
