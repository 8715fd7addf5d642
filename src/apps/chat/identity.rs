//! Who a chat client is when `[app.chat] auth` names a verifier
//! (docs/auth.md, "Chat"): the user is the token's `user_claim`, the `rooms`
//! claim limits what it may join, and `exp` (plus leeway) ends its sessions
//! unless a `refresh` frame brings a newer token. Without a token a client is
//! refused (401), or let in as a read-only guest when `anonymous = true`.
//!
//! Without `[app.chat] auth` nothing changes: the user is the route's
//! authenticated user when the route has `auth`, else `?user=` or a guest.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Request;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use tokio::time::Instant;

use super::protocol::{ChatError, RoomName, UserName};
use crate::auth::{self, AuthError, Verified, Verifier};
use crate::config::ChatAuthConfig;
use crate::metrics::RouteResult;

/// The `route` label of the chat's `wsgate_auth_total` counts.
const METRIC_ROUTE: &str = "app.chat";

/// What a client may do in the chat.
#[derive(Debug, Clone)]
pub struct Grants {
    /// Rooms it may join (and read the history or members of); `None`: any.
    rooms: Option<Arc<[RoomPattern]>>,
    /// Whether it may send (`msg`, `dm`): guests may not.
    pub send: bool,
}

impl Grants {
    /// No limits: the chat without `auth`, or a token without `rooms`.
    pub fn all() -> Self {
        Self {
            rooms: None,
            send: true,
        }
    }

    pub fn room(&self, room: &RoomName) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p.matches(room.as_str())))
    }

    /// `Ok` when `room` is allowed, else the `forbidden` error.
    pub fn check_room(&self, room: &RoomName) -> Result<(), ChatError> {
        if self.room(room) {
            Ok(())
        } else {
            Err(ChatError::RoomForbidden(room.clone()))
        }
    }
}

/// A room name, or a prefix of one (`team-7-*`); `*` alone matches any room.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoomPattern {
    Exact(String),
    Prefix(String),
}

impl RoomPattern {
    fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(prefix) => RoomPattern::Prefix(prefix.to_string()),
            None => RoomPattern::Exact(s.to_string()),
        }
    }

    fn matches(&self, room: &str) -> bool {
        match self {
            RoomPattern::Exact(r) => r == room,
            RoomPattern::Prefix(p) => room.starts_with(p.as_str()),
        }
    }
}

/// A client as the chat knows it.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserName,
    pub grants: Grants,
    /// When its token stops being valid (`exp` plus leeway).
    pub expires: Option<SystemTime>,
}

/// A sleep that never ends in practice: a session without a token.
pub const NEVER: Duration = Duration::from_secs(86_400 * 365);

/// A token's expiry on the runtime's clock (now, if it has passed); a
/// session without one gets [`NEVER`].
pub fn deadline(t: Option<SystemTime>) -> Instant {
    let left = match t {
        Some(t) => t
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
        None => NEVER,
    };
    Instant::now() + left
}

/// The chat's verifier and what `[app.chat]` says around it; rebuilt on reload.
pub struct ChatAuth {
    verifier: Arc<Verifier>,
    cfg: ChatAuthConfig,
    guest_rooms: Arc<[RoomPattern]>,
    counts: Family<RouteResult, Counter>,
}

impl ChatAuth {
    pub fn new(
        verifier: Arc<Verifier>,
        cfg: ChatAuthConfig,
        counts: Family<RouteResult, Counter>,
    ) -> Self {
        let guest_rooms = cfg
            .guest_rooms
            .iter()
            .map(|p| RoomPattern::parse(p))
            .collect();
        Self {
            verifier,
            cfg,
            guest_rooms,
            counts,
        }
    }

    /// Who sends `req`: its token's user, or a guest when there is no token
    /// and guests are let in (`guests`: the endpoint has a use for one). A bad
    /// token is never a guest: it is refused.
    pub fn identify<B>(
        &self,
        req: &Request<B>,
        upgrade: bool,
        guests: bool,
    ) -> Result<Identity, ChatError> {
        let twice = auth::ambiguous(
            &self.verifier.token_from,
            req.headers(),
            req.uri().query(),
            upgrade,
        );
        if let Some(what) = twice {
            // As a route's `auth` refuses it: which of two tokens is the
            // client's? One checked here might not be the one another
            // reader takes.
            self.count("invalid");
            return Err(ChatError::BadField {
                field: what,
                why: "given more than once",
            });
        }
        let found = auth::find(
            &self.verifier.token_from,
            req.headers(),
            req.uri().query(),
            upgrade,
        );
        match found {
            None if guests && self.cfg.anonymous => Ok(Identity {
                user: UserName::guest(),
                grants: Grants {
                    rooms: Some(self.guest_rooms.clone()),
                    send: false,
                },
                expires: None,
            }),
            None => {
                self.count("missing");
                Err(ChatError::TokenMissing)
            }
            Some(f) => self.verify(&f.token),
        }
    }

    /// The identity `token` proves; every failure is a 401 to the client with
    /// the reason in the debug log only.
    pub fn verify(&self, token: &str) -> Result<Identity, ChatError> {
        let v = self.verifier.verify(token).map_err(|e| self.refuse(e))?;
        let user = v
            .str_claim(&self.cfg.user_claim)
            .ok_or_else(|| {
                self.refuse(AuthError::Invalid(format!(
                    "no string claim {:?}",
                    self.cfg.user_claim
                )))
            })
            .and_then(|u| {
                UserName::parse(u).map_err(|e| self.refuse(AuthError::Invalid(e.to_string())))
            })?;
        self.count("ok");
        Ok(Identity {
            user,
            grants: Grants {
                rooms: rooms_claim(&v),
                send: true,
            },
            // Checked: a signed `exp` near the end of time must not overflow.
            expires: v
                .expires()
                .map(|t| t.checked_add(self.verifier.leeway).unwrap_or(t)),
        })
    }

    /// A `refresh` frame's token for a session of `user`: it must verify and
    /// name the same user.
    pub fn refresh(&self, user: &UserName, token: &str) -> Result<Identity, ChatError> {
        let id = self.verify(token)?;
        if &id.user != user {
            self.count("forbidden");
            return Err(ChatError::RefreshOtherUser);
        }
        Ok(id)
    }

    fn refuse(&self, e: AuthError) -> ChatError {
        self.count(e.result());
        tracing::debug!(verifier = %self.verifier.name, reason = %e, "chat: token refused");
        ChatError::TokenInvalid
    }

    fn count(&self, result: &str) {
        self.counts
            .get_or_create(&RouteResult {
                route: METRIC_ROUTE.to_string(),
                result: result.to_string(),
            })
            .inc();
    }
}

/// The `rooms` claim: a list of patterns (or one comma-separated string).
/// A token without it may join any room; one with an unusable value may join
/// none (failing closed: the issuer meant to limit it).
fn rooms_claim(v: &Verified) -> Option<Arc<[RoomPattern]>> {
    let patterns: Vec<RoomPattern> = match v.claims.get("rooms")? {
        Value::Null => return None,
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .map(RoomPattern::parse)
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(RoomPattern::parse)
            .collect(),
        _ => Vec::new(),
    };
    Some(patterns.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(ps: &[&str]) -> Grants {
        Grants {
            rooms: Some(ps.iter().map(|p| RoomPattern::parse(p)).collect()),
            send: true,
        }
    }

    #[test]
    fn patterns_match_names_and_prefixes() {
        let g = grants(&["lobby", "team-7-*"]);
        let room = |r: &str| RoomName::parse(r).unwrap();
        assert!(g.room(&room("lobby")));
        assert!(g.room(&room("team-7-dev")));
        assert!(!g.room(&room("lobby2")));
        assert!(!g.room(&room("team-8-dev")));
        assert!(grants(&["*"]).room(&room("anything")));
        assert!(!grants(&[]).room(&room("lobby")));
        assert!(Grants::all().room(&room("x")));
    }
}
