//! [`Bus`] for [`RedisBus`]: presence, membership and the online registry in
//! Redis, each call falling back to the node's mirror while Redis is down.
//! History has no fallback (this node never held it), so it reports the bus
//! unavailable instead.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use futures_util::future::BoxFuture;

use super::mirror::lock;
use super::publish::Outage;
use super::{ClusterError, RedisBus};
use crate::apps::chat::bus::{history_cutoff, Bus, BusError, Deliver, OnlineUser, Published};
use crate::apps::chat::protocol::{
    new_epoch, ChatMessage, DirectMessage, Event, Head, Presence, PresenceState, RoomName, UserName,
};
use crate::cluster::keys;

impl RedisBus {
    fn deliver_presence(&self, room: &RoomName, user: &UserName, state: PresenceState) {
        let ev = Event::encode(&Presence {
            room: room.clone(),
            user: user.clone(),
            state,
        });
        if let (Some(s), Ok(ev)) = (self.sink(), ev) {
            s.to_room(room, &ev);
        }
    }

    async fn room_join_now(&self, room: RoomName, user: UserName) -> Result<bool, BusError> {
        // The room's stripe orders the mirror's change and its write to Redis
        // with a re-registration's look at the same entry.
        let stripe = self.stripe(&room).lock().await;
        lock(&self.mirror).add_member(&room, &user);
        // Subscribed before the join is announced and before the hub reads
        // the room's head, so every message past that head reaches this node.
        self.sync_room_sub(&room).await;
        let new = self
            .try_redis(async { self.run_join(&mut self.conn.clone(), &room, &user).await })
            .await;
        drop(stripe);
        let new = new.unwrap_or_else(|| {
            self.mark_unsynced();
            // Outage: the hub only calls this for the first local connection.
            true
        });
        if new {
            self.deliver_presence(&room, &user, PresenceState::Join);
        }
        Ok(new)
    }

    async fn room_leave_now(&self, room: RoomName, user: UserName) -> Result<bool, BusError> {
        let stripe = self.stripe(&room).lock().await;
        let was = lock(&self.mirror).remove_member(&room, &user);
        let node = self.instance.clone();
        let gone = self
            .try_redis(async {
                self.run_leave(&mut self.conn.clone(), &node, &node, &room, &user)
                    .await
            })
            .await;
        drop(stripe);
        let gone = gone.unwrap_or_else(|| {
            self.mark_unsynced();
            was
        });
        self.sync_room_sub(&room).await;
        if gone {
            self.deliver_presence(&room, &user, PresenceState::Leave);
        }
        Ok(gone)
    }

    async fn members_now(&self, room: RoomName) -> Result<Vec<UserName>, BusError> {
        let got = self
            .try_redis(async {
                let entries: Vec<String> = redis::cmd("ZRANGE")
                    .arg(keys::room_members(room.as_str()))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut self.conn.clone())
                    .await?;
                Ok(entries)
            })
            .await;
        Ok(match got {
            Some(entries) => {
                let set: BTreeSet<UserName> = entries
                    .iter()
                    .filter_map(|e| e.split_once('\t'))
                    .filter_map(|(u, _)| UserName::parse(u).ok())
                    .collect();
                set.into_iter().collect()
            }
            None => self.local_members(&room),
        })
    }

    async fn lex_count(&self, key: String, user: &UserName) -> Result<bool, ClusterError> {
        let (lo, hi) = keys::user_range(user.as_str());
        let n: u64 = redis::cmd("ZLEXCOUNT")
            .arg(key)
            .arg(lo)
            .arg(hi)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    async fn online_now(&self) -> Result<Vec<OnlineUser>, BusError> {
        let got = self
            .try_redis(async {
                let entries: Vec<String> = redis::cmd("ZRANGE")
                    .arg(keys::ONLINE)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut self.conn.clone())
                    .await?;
                Ok(entries)
            })
            .await;
        let mut out: Vec<OnlineUser> = match got {
            Some(entries) => entries
                .iter()
                .filter_map(|e| e.split_once('\t'))
                .filter_map(|(u, n)| {
                    Some(OnlineUser {
                        user: UserName::parse(u).ok()?,
                        node: Arc::from(super::shown(n)),
                    })
                })
                .collect(),
            None => lock(&self.mirror)
                .users
                .iter()
                .map(|u| OnlineUser {
                    user: u.clone(),
                    node: self.name.clone(),
                })
                .collect(),
        };
        out.sort();
        Ok(out)
    }

    pub(super) async fn history_now(
        &self,
        room: RoomName,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, BusError> {
        self.settled().await;
        if !self.is_up() {
            return Err(BusError::Unavailable("history: redis unreachable".into()));
        }
        let cutoff = history_cutoff(self.history_ttl).unwrap_or(0);
        let raw: Vec<String> = match redis::cmd("LRANGE")
            .arg(keys::room_history(room.as_str()))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.conn.clone())
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.set_down(&e);
                return Err(ClusterError::from(e).into());
            }
        };
        let newer: Vec<ChatMessage> = raw
            .iter()
            .filter_map(|s| serde_json::from_str::<ChatMessage>(s).ok())
            .filter(|m| m.id > after && m.ts >= cutoff)
            .collect();
        let skip = newer.len().saturating_sub(limit);
        Ok(newer.into_iter().skip(skip).collect())
    }

    async fn heads_now(&self, rooms: Vec<RoomName>) -> Result<Vec<Head>, BusError> {
        self.settled().await;
        let got = self
            .try_redis(async {
                // One call per room: a room's keys share one shard, two
                // rooms' keys need not.
                let mut c = self.conn.clone();
                let mut raw: Vec<String> = Vec::with_capacity(rooms.len() * 2);
                for r in &rooms {
                    let pair: Vec<String> = self
                        .heads
                        .key(keys::room_epoch(r.as_str()))
                        .key(keys::room_id(r.as_str()))
                        .arg(&*new_epoch())
                        .arg(self.room_ttl_ms)
                        .invoke_async(&mut c)
                        .await?;
                    raw.extend(pair);
                }
                Ok(raw)
            })
            .await;
        let mut m = lock(&self.mirror);
        Ok(match got {
            Some(raw) => rooms
                .iter()
                .zip(raw.chunks(2))
                .map(|(r, pair)| {
                    let epoch: Arc<str> = Arc::from(pair.first().map_or("", String::as_str));
                    // Remembered for an outage: its local ids go on in this stream.
                    if m.epochs.insert(r.clone(), epoch.clone()).is_none() {
                        m.prune();
                    }
                    Head {
                        epoch,
                        offset: pair.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
                    }
                })
                .collect(),
            None => {
                let heads = rooms
                    .iter()
                    .map(|r| Head {
                        epoch: m.epochs.entry(r.clone()).or_insert_with(new_epoch).clone(),
                        offset: m.last_ids.get(r).copied().unwrap_or(0),
                    })
                    .collect();
                m.prune();
                heads
            }
        })
    }
}

impl Bus for RedisBus {
    fn node(&self) -> &str {
        &self.name
    }

    fn attach(&self, sink: Weak<dyn Deliver>) {
        if self.sink.set(sink).is_err() {
            tracing::warn!("cluster bus: a delivery sink is already attached; ignoring the second");
        }
    }

    fn publish_room(
        &self,
        room: RoomName,
        from: UserName,
        text: Arc<str>,
    ) -> BoxFuture<'_, Result<Published<ChatMessage>, BusError>> {
        Box::pin(self.publish_room_now(room, from, text, Outage::LocalOnly))
    }

    fn push_room(
        &self,
        room: RoomName,
        from: UserName,
        text: Arc<str>,
    ) -> BoxFuture<'_, Result<Published<ChatMessage>, BusError>> {
        Box::pin(self.publish_room_now(room, from, text, Outage::Refuse))
    }

    fn push_dm(
        &self,
        from: UserName,
        to: UserName,
        text: Arc<str>,
    ) -> BoxFuture<'_, Result<Published<DirectMessage>, BusError>> {
        Box::pin(self.publish_dm_now(from, to, text, false, Outage::Refuse))
    }

    fn publish_dm(
        &self,
        from: UserName,
        to: UserName,
        text: Arc<str>,
        echo: bool,
    ) -> BoxFuture<'_, Result<Published<DirectMessage>, BusError>> {
        Box::pin(self.publish_dm_now(from, to, text, echo, Outage::LocalOnly))
    }

    fn room_join(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(self.room_join_now(room, user))
    }

    fn room_leave(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(self.room_leave_now(room, user))
    }

    fn members(&self, room: RoomName) -> BoxFuture<'_, Result<Vec<UserName>, BusError>> {
        Box::pin(self.members_now(room))
    }

    fn is_member(&self, room: RoomName, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async move {
            let key = keys::room_members(room.as_str());
            match self.try_redis(self.lex_count(key, &user)).await {
                Some(b) => Ok(b),
                None => Ok(lock(&self.mirror).rooms.contains(&(room, user))),
            }
        })
    }

    fn user_online(&self, user: UserName) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            lock(&self.mirror).users.insert(user.clone());
            let node = &*self.instance;
            self.try_redis(async {
                let mut c = self.conn.clone();
                // The node's hash and the online set are on different shards
                // of a Redis Cluster: one command (or pipeline) each.
                let _: () = redis::pipe()
                    .hset(keys::node_users(node), user.as_str(), 1)
                    .ignore()
                    .query_async(&mut c)
                    .await?;
                let _: i64 = redis::cmd("ZADD")
                    .arg(keys::ONLINE)
                    .arg(0)
                    .arg(keys::user_at(user.as_str(), node))
                    .query_async(&mut c)
                    .await?;
                Ok(())
            })
            .await;
            Ok(())
        })
    }

    fn user_offline(&self, user: UserName) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            lock(&self.mirror).users.remove(&user);
            let node = &*self.instance;
            self.try_redis(async {
                let mut c = self.conn.clone();
                let _: i64 = redis::cmd("HDEL")
                    .arg(keys::node_users(node))
                    .arg(user.as_str())
                    .query_async(&mut c)
                    .await?;
                let _: i64 = redis::cmd("ZREM")
                    .arg(keys::ONLINE)
                    .arg(keys::user_at(user.as_str(), node))
                    .query_async(&mut c)
                    .await?;
                Ok(())
            })
            .await;
            Ok(())
        })
    }

    fn online(&self) -> BoxFuture<'_, Result<Vec<OnlineUser>, BusError>> {
        Box::pin(self.online_now())
    }

    fn is_online(&self, user: UserName) -> BoxFuture<'_, Result<bool, BusError>> {
        Box::pin(async move {
            match self
                .try_redis(self.lex_count(keys::ONLINE.to_string(), &user))
                .await
            {
                Some(b) => Ok(b),
                None => Ok(lock(&self.mirror).users.contains(&user)),
            }
        })
    }

    fn history(
        &self,
        room: RoomName,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ChatMessage>, BusError>> {
        Box::pin(self.history_now(room, after, limit))
    }

    fn heads(&self, rooms: Vec<RoomName>) -> BoxFuture<'_, Result<Vec<Head>, BusError>> {
        Box::pin(self.heads_now(rooms))
    }
}
