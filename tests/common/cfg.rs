//! A small typed builder for test configs. It emits TOML text (via the `toml`
//! crate) for [`super::TestGateway::start`], so tests never splice config text:
//!
//! ```ignore
//! let toml = Cfg::new()
//!     .listener_plain()
//!     .upstream("api", &[addr])
//!     .set("upstream.api.retries", 2)
//!     .route(Route::upstream("/api/", "api").set("strip_prefix", true))
//!     .build();
//! ```
//!
//! Strings may hold `{dir}`: `TestGateway::start` replaces it by its temp dir.

use std::fmt::Display;

use toml::{Table, Value};

/// A whole config file.
#[derive(Debug, Clone, Default)]
pub struct Cfg {
    root: Table,
}

impl Cfg {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (dotted: `"upstream.api.retries"`, `"app.chat.history"`),
    /// creating the tables on the way.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        set_in(&mut self.root, key, value.into());
        self
    }

    /// Appends a `[[listener]]`.
    pub fn listener(mut self, l: Listener) -> Self {
        push(&mut self.root, "listener", l.0);
        self
    }

    /// A plain listener on `127.0.0.1:0`.
    pub fn listener_plain(self) -> Self {
        self.listener(Listener::plain())
    }

    /// A TLS listener on `127.0.0.1:0` with one certificate.
    pub fn listener_tls(self, cert: impl Display, key: impl Display) -> Self {
        self.listener(Listener::plain().tls(cert, key))
    }

    /// `[admin]` on `127.0.0.1:0`.
    pub fn admin(self) -> Self {
        self.set("admin.addr", "127.0.0.1:0")
    }

    /// `[upstream.NAME]` with `servers` (plain addresses).
    pub fn upstream<S: Display>(self, name: &str, servers: &[S]) -> Self {
        let list: Vec<Value> = servers.iter().map(|s| s.to_string().into()).collect();
        self.set(&format!("upstream.{name}.servers"), list)
    }

    /// `[upstream.NAME]` with `servers = [{ addr, weight }, ...]`.
    pub fn weighted_upstream<S: Display>(self, name: &str, servers: &[(S, u32)]) -> Self {
        let list: Vec<Value> = servers
            .iter()
            .map(|(addr, weight)| {
                let mut t = Table::new();
                t.insert("addr".into(), addr.to_string().into());
                t.insert("weight".into(), (*weight).into());
                Value::Table(t)
            })
            .collect();
        self.set(&format!("upstream.{name}.servers"), list)
    }

    /// Appends a `[[route]]`.
    pub fn route(mut self, r: Route) -> Self {
        push(&mut self.root, "route", r.0);
        self
    }

    /// A route to an upstream pool.
    pub fn route_upstream(self, path: &str, upstream: &str) -> Self {
        self.route(Route::upstream(path, upstream))
    }

    /// A route to an in-process app (`echo`, `chat`).
    pub fn route_app(self, path: &str, app: &str) -> Self {
        self.route(Route::app(path, app))
    }

    /// A route serving static files from `root`.
    pub fn route_root(self, path: &str, root: impl Display) -> Self {
        self.route(Route::root(path, root))
    }

    /// The TOML text.
    pub fn build(&self) -> String {
        self.root.to_string()
    }
}

/// One `[[listener]]`.
#[derive(Debug, Clone)]
pub struct Listener(Table);

impl Listener {
    /// Plain, on `127.0.0.1:0`.
    pub fn plain() -> Self {
        Self::at("127.0.0.1:0")
    }

    /// Plain, on `addr`.
    pub fn at(addr: impl Display) -> Self {
        let mut t = Table::new();
        t.insert("addr".into(), addr.to_string().into());
        Self(t)
    }

    /// Serves TLS with this default certificate.
    pub fn tls(mut self, cert: impl Display, key: impl Display) -> Self {
        set_in(&mut self.0, "tls.cert", cert.to_string().into());
        set_in(&mut self.0, "tls.key", key.to_string().into());
        self
    }

    /// Any other listener key, dotted: `connection_limits`, `proxy_protocol`,
    /// `tls.client_ca` (after [`Listener::tls`]), ...
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        set_in(&mut self.0, key, value.into());
        self
    }

    /// Adds a certificate for the SNI name `host` (after [`Listener::tls`]).
    pub fn sni(mut self, host: &str, cert: impl Display, key: impl Display) -> Self {
        let mut t = Table::new();
        t.insert("host".into(), host.into());
        t.insert("cert".into(), cert.to_string().into());
        t.insert("key".into(), key.to_string().into());
        let tls = self
            .0
            .get_mut("tls")
            .and_then(Value::as_table_mut)
            .expect("sni after tls");
        push(tls, "sni", t);
        self
    }
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct Route(Table);

impl Route {
    fn to(path: &str, kind: &str, target: String) -> Self {
        let mut t = Table::new();
        t.insert("path".into(), path.into());
        t.insert(kind.into(), target.into());
        Self(t)
    }

    pub fn upstream(path: &str, upstream: &str) -> Self {
        Self::to(path, "upstream", upstream.into())
    }

    pub fn app(path: &str, app: &str) -> Self {
        Self::to(path, "app", app.into())
    }

    pub fn root(path: &str, root: impl Display) -> Self {
        Self::to(path, "root", root.to_string())
    }

    /// Matches only this host (`*.example.test` for a wildcard).
    pub fn host(self, host: &str) -> Self {
        self.set("host", host)
    }

    /// Any other route key: `strip_prefix`, `websocket`, `origins`.
    pub fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        set_in(&mut self.0, key, value.into());
        self
    }
}

fn set_in(table: &mut Table, key: &str, value: Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().expect("a key");
    let mut t = table;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("{key}: {p} is not a table"));
    }
    t.insert(last.to_string(), value);
}

fn push(table: &mut Table, key: &str, item: Table) {
    table
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .unwrap_or_else(|| panic!("{key} is not an array"))
        .push(Value::Table(item));
}
