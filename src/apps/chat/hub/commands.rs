//! Execution of client frames, for a WebSocket connection or for `POST /send`
//! (which acts on the user's SSE streams and poll sessions on this node).

use std::sync::Arc;

use super::{Conn, Hub};
use crate::apps::chat::identity::Grants;
use crate::apps::chat::protocol::{
    ChatError, ClientFrame, Event, HistoryFrame, Presence, PresenceState, UserName, WhoFrame,
};

/// Who a frame comes from.
#[derive(Clone, Copy)]
pub enum Actor<'a> {
    /// A WebSocket connection: join/leave act on it, replies are queued to it.
    Conn(&'a Arc<Conn>),
    /// `POST /send`: join/leave act on the user's SSE streams and poll sessions
    /// on this node; the reply is the response body.
    Http(&'a UserName, &'a Grants),
}

impl Actor<'_> {
    fn user(&self) -> &UserName {
        match self {
            Actor::Conn(c) => &c.user,
            Actor::Http(u, _) => u,
        }
    }

    fn grants(&self) -> Grants {
        match self {
            Actor::Conn(c) => c.grants(),
            Actor::Http(_, g) => (*g).clone(),
        }
    }
}

impl Hub {
    /// Executes one client frame. Returns the reply: for a WebSocket it is queued
    /// to the connection (`history`, `who`), for `POST /send` it is the response
    /// body (also the stored `msg`/`dm` and the `presence` acknowledgement).
    pub async fn execute(
        &self,
        actor: Actor<'_>,
        frame: ClientFrame,
    ) -> Result<Option<Event>, ChatError> {
        let user = actor.user().clone();
        let http = matches!(actor, Actor::Http(..));
        let grants = actor.grants();
        match &frame {
            ClientFrame::Join { room, .. }
            | ClientFrame::History { room, .. }
            | ClientFrame::Who { room } => grants.check_room(room)?,
            ClientFrame::Msg { .. } | ClientFrame::Dm { .. } if !grants.send => {
                return Err(ChatError::ReadOnly)
            }
            // A session's token is refreshed by the WebSocket session itself
            // (`ws`); over HTTP each request carries its own token.
            ClientFrame::Refresh { .. } => return Err(ChatError::RefreshUnsupported),
            _ => {}
        }
        match frame {
            ClientFrame::Join { room, since } => match actor {
                Actor::Conn(c) => {
                    c.change_membership()?;
                    self.join(c, &room, since).await.map(|_| None)
                }
                Actor::Http(u, _) => {
                    let conns = self.fallback_conns(u);
                    if conns.is_empty() {
                        return Err(ChatError::NoStream(u.clone()));
                    }
                    for c in &conns {
                        c.change_membership()?;
                        self.join(c, &room, None).await?;
                    }
                    Ok(Some(Event::encode(&Presence {
                        room,
                        user,
                        state: PresenceState::Join,
                    })?))
                }
            },
            ClientFrame::Leave { room } => match actor {
                Actor::Conn(c) => {
                    c.change_membership()?;
                    self.leave(c, &room, true).await.map(|_| None)
                }
                Actor::Http(u, _) => {
                    let conns: Vec<_> = self
                        .fallback_conns(u)
                        .into_iter()
                        .filter(|c| c.in_room(&room))
                        .collect();
                    if conns.is_empty() {
                        return Err(ChatError::NotJoined(room));
                    }
                    for c in &conns {
                        c.change_membership()?;
                        self.leave(c, &room, true).await?;
                    }
                    Ok(Some(Event::encode(&Presence {
                        room,
                        user,
                        state: PresenceState::Leave,
                    })?))
                }
            },
            ClientFrame::Msg { room, text } => {
                let member = match actor {
                    Actor::Conn(c) => c.in_room(&room),
                    Actor::Http(..) => self.bus.is_member(room.clone(), user.clone()).await?,
                };
                if !member {
                    return Err(ChatError::NotJoined(room));
                }
                let p = self.bus.publish_room(room, user, text.into()).await?;
                Ok(if http {
                    Some(Event::msg(&p.item)?)
                } else {
                    None
                })
            }
            ClientFrame::Dm { to, text } => {
                if !self.bus.is_online(to.clone()).await? {
                    return Err(ChatError::UserOffline(to));
                }
                let p = self.bus.publish_dm(user, to, text.into(), true).await?;
                Ok(if http {
                    Some(Event::encode(&p.item)?)
                } else {
                    None
                })
            }
            ClientFrame::History { room, limit } => {
                let messages = self
                    .bus
                    .history(room.clone(), 0, limit.min(self.history_cap))
                    .await?;
                Ok(Some(Event::encode(&HistoryFrame {
                    room: &room,
                    messages: &messages,
                })?))
            }
            ClientFrame::Who { room } => {
                let users = self.bus.members(room.clone()).await?;
                Ok(Some(Event::encode(&WhoFrame {
                    room: &room,
                    users: &users,
                })?))
            }
            ClientFrame::Refresh { .. } => Err(ChatError::RefreshUnsupported),
        }
    }
}
