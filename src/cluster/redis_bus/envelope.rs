//! The envelope: what travels on a room's or a node's channel
//! ([`keys::room_channel`](crate::cluster::keys::room_channel),
//! [`keys::node_channel`](crate::cluster::keys::node_channel)), how it is encoded
//! (including a room message split around its id for the publish script), and
//! its receipt: the push task decodes envelopes and hands other nodes' events
//! to the local sink, skipping this node's own.

use std::sync::Arc;

use redis::{PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ClusterError, RedisBus};
use crate::apps::chat::protocol::{
    ChatMessage, DirectMessage, Event, Presence, PresenceState, RoomName, UserName,
};

/// What travels on the room and node channels. `o` is the
/// origin node ("" for sweeper announcements, which every node delivers).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(super) enum Envelope {
    Msg {
        o: String,
        /// Whether the origin delivered it to its own members at once; if
        /// not, it does so on receipt, in the channel's (the ids') order.
        #[serde(default)]
        l: bool,
        msg: ChatMessage,
    },
    Presence {
        o: String,
        p: Presence,
    },
    Users {
        o: String,
        users: Vec<UserName>,
        dm: DirectMessage,
    },
}

/// The message's JSON split around its id, so the publish script can insert
/// the id it assigns (`before .. id .. after`). Names never contain `"id":`
/// unescaped and the id follows the text, so the last match is the field.
pub(super) fn split_at_id(msg: &ChatMessage) -> Result<(String, String), ClusterError> {
    let mut probe = msg.clone();
    probe.id = u64::MAX;
    let json = serde_json::to_string(&probe)?;
    let marker = format!("\"id\":{}", u64::MAX);
    let at = json
        .rfind(&marker)
        .ok_or_else(|| ClusterError::Reply("message JSON without id".into()))?;
    let id_key = "\"id\":".len();
    Ok((
        json[..at + id_key].to_string(),
        json[at + marker.len()..].to_string(),
    ))
}

impl RedisBus {
    /// `msg` to this node's members of its room, unless it is the message
    /// delivered there last.
    fn deliver(&self, sink: &dyn crate::apps::chat::bus::Deliver, msg: &ChatMessage) {
        if !self.first_delivery(msg) {
            return;
        }
        if let Ok(ev) = Event::msg(msg) {
            sink.to_room(&msg.room, &ev);
        }
    }

    pub(super) fn presence_envelope(
        &self,
        origin: &str,
        room: &RoomName,
        user: &UserName,
        state: PresenceState,
    ) -> Result<String, ClusterError> {
        Ok(serde_json::to_string(&Envelope::Presence {
            o: origin.to_string(),
            p: Presence {
                room: room.clone(),
                user: user.clone(),
                state,
            },
        })?)
    }

    pub(super) async fn run_pushes(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<PushInfo>,
        stop: CancellationToken,
    ) {
        loop {
            let push = tokio::select! {
                _ = stop.cancelled() => return,
                p = rx.recv() => match p { Some(p) => p, None => return },
            };
            match push.kind {
                PushKind::Message | PushKind::SMessage => {
                    if let Some(Value::BulkString(payload)) = push.data.get(1) {
                        // Awaited here: a gap's fill goes out before the
                        // messages behind it.
                        self.on_envelope(payload).await;
                    }
                }
                PushKind::Disconnection => self.set_down(&"connection closed"),
                // Redis ends a shard channel's subscriptions itself when the
                // slot moves to another shard or its master becomes a
                // replica; our own unsubscribes come here too.
                PushKind::SUnsubscribe | PushKind::Unsubscribe => {
                    let room = match push.data.first() {
                        Some(Value::BulkString(c)) => crate::cluster::keys::room_of_channel(c)
                            .and_then(|r| RoomName::parse(r).ok()),
                        _ => None,
                    };
                    if let Some(room) = room {
                        let bus = self.clone();
                        tokio::spawn(async move { bus.resubscribe_dropped(&room).await });
                    }
                }
                _ => {}
            }
        }
    }

    pub(super) async fn on_envelope(&self, payload: &[u8]) {
        let env: Envelope = match serde_json::from_slice(payload) {
            Ok(e) => e,
            Err(e) => {
                // Anyone who can publish to Redis can send these: one
                // warning in 10 s says it happens without a line for each.
                static WARN: crate::logging::Every = crate::logging::Every::secs(10);
                if WARN.due() {
                    tracing::warn!(error = %e, "cluster: undecodable envelope (more within 10 s at debug)");
                } else {
                    tracing::debug!(error = %e, "cluster: undecodable envelope");
                }
                return;
            }
        };
        let Some(sink) = self.sink() else { return };
        match env {
            Envelope::Msg { o, l, msg } => {
                self.note_id(&msg.room, msg.id);
                if l && *o == *self.instance {
                    // Delivered at once when it was sent: noted again here,
                    // in channel order, so it is not taken for missed.
                    self.first_delivery(&msg);
                    return;
                }
                for missed in self.missed_before(&msg).await {
                    self.deliver(&*sink, &missed);
                }
                self.deliver(&*sink, &msg);
            }
            Envelope::Presence { o, p } => {
                if *o == *self.instance {
                    return;
                }
                if let Ok(ev) = Event::encode(&p) {
                    sink.to_room(&p.room, &ev);
                }
            }
            Envelope::Users { o, users, dm } => {
                if *o == *self.instance {
                    return;
                }
                self.note_dm_id(dm.id);
                if let Ok(ev) = Event::encode(&dm) {
                    let refs: Vec<&UserName> = users.iter().collect();
                    sink.to_users(&refs, &ev);
                }
            }
        }
    }
}
