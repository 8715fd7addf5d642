//! Routing: `(host, path)` → the configured route. Pure and immutable; a reload
//! builds a new table. Rules (spec §2): a route with a matching host beats any
//! route without one; among those, the longest path prefix wins. A prefix matches
//! on segment boundaries: `/chat` matches `/chat`, `/chat/` and `/chat/x` but not
//! `/chatty` (a prefix ending in `/` matches everything under it).

use std::sync::Arc;

use crate::config::{HostPattern, RouteConfig};

/// Index of a route in the table, stable for the table's lifetime.
pub type RouteId = usize;

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<RouteConfig>>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self {
            routes: routes.iter().cloned().map(Arc::new).collect(),
        }
    }

    pub fn routes(&self) -> &[Arc<RouteConfig>] {
        &self.routes
    }

    /// Finds the route for a request. `host` may carry a port and any case.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<RouteConfig>> {
        let host = host.map(normalize_host);
        let mut best: Option<(&Arc<RouteConfig>, (u8, usize))> = None;
        for r in &self.routes {
            let host_rank = match (&r.host, host.as_deref()) {
                (None, _) => 0,
                (Some(p), Some(h)) if p.matches(h) => match p {
                    HostPattern::Exact(_) => 2,
                    HostPattern::Wildcard(_) => 1,
                },
                (Some(_), _) => continue,
            };
            if !prefix_matches(&r.path, path) {
                continue;
            }
            let rank = (host_rank, r.path.len());
            if best.as_ref().is_none_or(|(_, b)| rank > *b) {
                best = Some((r, rank));
            }
        }
        best.map(|(r, _)| r)
    }
}

/// Lower-cases and drops the port (`Example.COM:8443` → `example.com`; IPv6
/// literals keep their brackets).
pub fn normalize_host(h: &str) -> String {
    let h = h.trim();
    let no_port = if h.starts_with('[') {
        h.split_inclusive(']').next().unwrap_or(h)
    } else {
        h.rsplit_once(':').map(|(a, _)| a).unwrap_or(h)
    };
    no_port.trim_end_matches('.').to_ascii_lowercase()
}

pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AppKind, RouteTarget};

    fn route(host: Option<&str>, path: &str, app: AppKind) -> RouteConfig {
        RouteConfig {
            host: host.map(|h| HostPattern::parse(h).unwrap()),
            path: path.into(),
            target: RouteTarget::App(app),
            strip_prefix: false,
            websocket: true,
            origins: None,
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
        assert_eq!(r.find(Some("x"), "/chat/sse").unwrap().path, "/chat");
        assert_eq!(r.find(Some("x"), "/chatty").unwrap().path, "/");
        assert_eq!(r.find(Some("x"), "/chat").unwrap().path, "/chat");
        // A host route beats a longer path without host.
        let w = r.find(Some("a.Example.test:443"), "/chat/x").unwrap();
        assert!(w.host.is_some());
        assert_eq!(w.target, RouteTarget::App(AppKind::Chat));
        let e = r.find(Some("API.example.test"), "/chat").unwrap();
        assert_eq!(e.host, Some(HostPattern::Exact("api.example.test".into())));
    }

    #[test]
    fn no_match() {
        let r = Router::new(&[route(Some("a.test"), "/x", AppKind::Echo)]);
        assert!(r.find(Some("b.test"), "/x").is_none());
        assert!(r.find(None, "/x").is_none());
        assert!(r.find(Some("a.test"), "/y").is_none());
    }

    #[test]
    fn hosts_normalized() {
        assert_eq!(normalize_host("Example.COM:8443"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("example.com."), "example.com");
    }
}
