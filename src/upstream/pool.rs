//! A pool of upstream servers for one `[upstream.NAME]`: its [`Backend`]s (each
//! with its own load, health and keep-alive connections), the balancing state,
//! and the key sealing its sticky cookies.
//!
//! The proxy asks a pool for a server in two steps: [`Pool::affinity`] reads what
//! the request carries that may pin it (a sealed cookie, the client address, a
//! header or query value), then [`Pool::select`] picks a usable server (up, and
//! under its `max_conns`) and counts the attempt against it, honouring that
//! affinity when it can and falling back to `balance` when it cannot. After
//! the attempt the proxy reports back ([`Pool::report_success`] /
//! [`Pool::report_failure`]), which feeds passive health.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue};

use super::backend::{Backend, BackendId, InflightGuard, Tried};
use super::balance::{least_conn, rendezvous, two_choices, SmoothWrr};
use super::health::{Source, Transition};
use super::sticky::{self, SealKey, Token};
use super::tls::{UpstreamTls, UpstreamTlsError};
use crate::config::{Balance, Sticky, UpstreamConfig, UpstreamProtocol};

/// What a request carries that may pin it to a server.
#[derive(Debug, Clone, Default)]
pub enum Affinity {
    /// Nothing: `balance` decides.
    #[default]
    None,
    /// `ip`, `header:NAME`, `query:NAME`: rendezvous-hash this key.
    Hash(Vec<u8>),
    /// `cookie`: the authentic, unexpired tokens the request presented (usually
    /// zero or one), read at `now` (unix seconds).
    Cookie { tokens: Vec<Token>, now: u64 },
}

/// The server chosen for one attempt.
#[derive(Debug)]
pub struct Choice<'a> {
    /// Borrowed from the pool: a clone per request would write the server's
    /// reference count, a line that every worker's requests to it share.
    pub backend: &'a Arc<Backend>,
    /// The attempt's place in the server's in-flight count (its `max_conns`,
    /// `least_conn`): held until the response has been sent, or the session ends.
    pub inflight: InflightGuard,
    /// The response must carry a (new) sticky cookie naming `backend`: the
    /// request had no usable token, or its token is due for renewal.
    pub issue_cookie: bool,
}

/// Why no server was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// Every server not yet tried is down: 502 at once.
    Down,
    /// Some server is up but every one of those is at its `max_conns`: 503.
    Full,
}

pub struct Pool {
    pub cfg: UpstreamConfig,
    backends: Vec<Arc<Backend>>,
    weights: Vec<u32>,
    wrr: SmoothWrr,
    /// Seals and opens this pool's sticky cookies (derived once, when the pool
    /// is built, from the gateway's secret and the pool's name).
    seal: SealKey,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.cfg.name)
            .field("backends", &self.backends)
            .finish()
    }
}

impl Pool {
    /// Builds a pool. `previous` lets a reload keep health state and in-flight
    /// counts for servers that stay (matched by id, so by address). `secret`
    /// (`[server] secret`) is what this pool's sticky-cookie key is derived from.
    ///
    /// With `tls`, the trust roots and client certificate are read now
    /// (on every reload too); that is what can fail.
    pub fn new(
        cfg: UpstreamConfig,
        previous: Option<&Pool>,
        secret: &[u8; 32],
    ) -> Result<Self, UpstreamTlsError> {
        let tls = cfg
            .tls
            .as_ref()
            .map(|t| UpstreamTls::build(t, cfg.protocol == UpstreamProtocol::H2))
            .transpose()?
            .map(Arc::new);
        let backends: Vec<Arc<Backend>> = cfg
            .servers
            .iter()
            .map(|s| {
                let old = previous.and_then(|p| p.backend(BackendId::of(&s.addr)));
                Arc::new(Backend::new(
                    s,
                    (cfg.connect_timeout, cfg.response_timeout),
                    tls.clone(),
                    cfg.protocol != UpstreamProtocol::H1,
                    old.as_deref(),
                ))
            })
            .collect();
        let weights = backends.iter().map(|b| b.weight).collect();
        Ok(Self {
            wrr: SmoothWrr::new(backends.len()),
            weights,
            backends,
            seal: SealKey::derive(secret, &cfg.name),
            cfg,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn backend(&self, id: BackendId) -> Option<Arc<Backend>> {
        self.backend_ref(id).cloned()
    }

    fn backend_ref(&self, id: BackendId) -> Option<&Arc<Backend>> {
        self.backends.iter().find(|b| b.id == id)
    }

    /// The key sealing this pool's cookies, derived from the gateway's secret.
    pub fn seal_key(&self) -> &SealKey {
        &self.seal
    }

    /// Reads the request's affinity under this pool's `sticky` mode.
    pub fn affinity(&self, client: IpAddr, headers: &HeaderMap, query: Option<&str>) -> Affinity {
        match &self.cfg.sticky {
            Sticky::Cookie => {
                let now = sticky::now();
                let tokens = sticky::tokens_in(headers, &self.cfg.sticky_cookie, &self.seal, now);
                Affinity::Cookie { tokens, now }
            }
            mode => sticky::hash_key(mode, client, headers, query)
                .map_or(Affinity::None, Affinity::Hash),
        }
    }

    /// Chooses a usable server not in `exclude` (the servers already tried for
    /// this request) and counts the attempt against it. Down servers are never
    /// waited for (the caller answers 502 at once); a server at its
    /// `max_conns` is passed over like a down one, for this attempt only, and
    /// when every server left is up but full the answer is [`Unavailable::Full`].
    pub fn select(
        &self,
        affinity: &Affinity,
        exclude: &[BackendId],
    ) -> Result<Choice<'_>, Unavailable> {
        let now = Instant::now();
        // Servers found full on the way: another request took the last place
        // between the look and the count. Bounded by the pool's size.
        let mut full = Tried::new();
        loop {
            // Up and not yet tried: a candidate but for its room.
            let eligible = |b: &Backend| !exclude.contains(&b.id) && self.is_up_at(b, now);
            let usable = |b: &Backend| eligible(b) && !full.contains(&b.id) && !b.is_full();
            let Some((backend, issue_cookie)) = self.pick(affinity, &eligible, &usable) else {
                // Nothing usable: if some server is up and untried, only
                // max_conns stood in the way (503), else all are down (502).
                let busy = self.backends.iter().any(|b| eligible(b));
                return Err(if busy {
                    Unavailable::Full
                } else {
                    Unavailable::Down
                });
            };
            match backend.try_track() {
                Some(inflight) => {
                    return Ok(Choice {
                        backend,
                        inflight,
                        issue_cookie,
                    })
                }
                // Lost the last place to another worker. Round robin has
                // already charged this server its turn; the skew is one pick.
                None => full.push(backend.id),
            }
        }
    }

    /// The server `affinity` and `balance` pick among those `usable` says
    /// may be, and whether the response must carry a new sticky cookie.
    /// `eligible`: up and untried, whatever its room.
    #[inline]
    fn pick(
        &self,
        affinity: &Affinity,
        eligible: &impl Fn(&Backend) -> bool,
        usable: &impl Fn(&Backend) -> bool,
    ) -> Option<(&Arc<Backend>, bool)> {
        match affinity {
            Affinity::Cookie { tokens, now } => {
                let pinned = tokens
                    .iter()
                    .find_map(|t| self.backend_ref(t.backend).map(|b| (b, t)));
                match pinned {
                    Some((b, t)) if usable(b) => Some((b, t.needs_refresh(*now))),
                    // Up but full: this request goes elsewhere and the
                    // client keeps its pin (HAProxy would queue it there).
                    Some((b, _)) if eligible(b) => self.balance(usable).map(|b| (b, false)),
                    // A token naming a server that is gone, down or already
                    // tried is ignored: choose again and issue a new cookie.
                    _ => self.balance(usable).map(|b| (b, true)),
                }
            }
            Affinity::Hash(key) => {
                // Fixed weights, health filter: a key only moves when its server
                // goes down or is full (and comes back when it returns).
                let cands = self.backends.iter().filter(|b| usable(b));
                rendezvous(key, cands, |b| b.id.0, |b| b.weight).map(|b| (b, false))
            }
            Affinity::None => self.balance(usable).map(|b| (b, false)),
        }
    }

    /// The `Set-Cookie` value a response must carry for `choice`, if any.
    pub fn sticky_cookie(&self, choice: &Choice, secure: bool) -> Option<HeaderValue> {
        if !choice.issue_cookie || self.cfg.sticky != Sticky::Cookie {
            return None;
        }
        sticky::set_cookie(
            &self.cfg.sticky_cookie,
            &self.seal,
            choice.backend.id,
            sticky::now(),
            secure,
        )
    }

    fn balance(&self, usable: &impl Fn(&Backend) -> bool) -> Option<&Arc<Backend>> {
        let servers = &self.backends;
        let pick = match self.cfg.balance {
            Balance::RoundRobin => self.wrr.pick(&self.weights, |i| usable(&servers[i])),
            Balance::LeastConn => least_conn(servers, &self.weights, &self.wrr, |b| usable(b)),
            Balance::Random => two_choices(servers, |b| usable(b), rand::random),
        };
        pick.map(|i| &servers[i])
    }

    /// Usable now? Logs the passive recovery this check may notice.
    pub fn is_up(&self, b: &Backend) -> bool {
        self.is_up_at(b, Instant::now())
    }

    fn is_up_at(&self, b: &Backend, now: Instant) -> bool {
        let (up, change) = b.health().check(now);
        if let Some(t) = change {
            self.log_transition(b, t);
        }
        up
    }

    /// Reports an attempt's failure to passive health; logs when it takes the
    /// server down.
    pub fn report_failure(&self, b: &Backend) {
        if let Some(t) =
            b.health()
                .record_failure(self.cfg.max_fails, self.cfg.fail_timeout, Instant::now())
        {
            self.log_transition(b, t);
        }
    }

    pub fn report_success(&self, b: &Backend) {
        b.health().record_success();
    }

    /// Logs a state change of one server. Always at warn: operators want to
    /// see both a server leaving and it coming back.
    pub fn log_transition(&self, b: &Backend, t: Transition) {
        let state = if t.up { "up" } else { "down" };
        let usable = b.health().peek(Instant::now());
        match t.source {
            Source::Passive if !t.up => tracing::warn!(
                upstream = %self.cfg.name, server = %b.addr, state, source = t.source.as_str(),
                usable, down_for_ms = self.cfg.fail_timeout.as_millis() as u64, "upstream server state changed"
            ),
            _ => tracing::warn!(
                upstream = %self.cfg.name, server = %b.addr, state, source = t.source.as_str(),
                usable, "upstream server state changed"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
