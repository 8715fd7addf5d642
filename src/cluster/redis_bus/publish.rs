//! Publishing room messages (one script: id, history, one publication; local
//! fan-out under the room's stripe lock) and DMs (an id, local delivery, and
//! one publication on the channel of each other node holding the recipient or
//! the echoed sender).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::redis_conn::RedisConn;

use super::envelope::{split_at_id, Envelope};
use super::mirror::lock;
use super::{ClusterError, RedisBus};
use crate::apps::chat::bus::{history_cutoff, BusError, Published};
use crate::apps::chat::protocol::{
    new_epoch, now_ms, ChatMessage, DirectMessage, Event, RoomName, UserName,
};
use crate::cluster::keys;

/// Half of `INCR`'s range: no real counter gets there, and a floor at it
/// still leaves room to count.
const MAX_DM_ID: u64 = i64::MAX as u64 / 2;

impl RedisBus {
    async fn publish_room_redis(
        &self,
        msg: &ChatMessage,
        local_now: bool,
    ) -> Result<(u64, usize), ClusterError> {
        let (before, after) = split_at_id(msg)?;
        let (floor, epoch) = self.known_head(&msg.room);
        let env_prefix = format!(
            "{{\"k\":\"msg\",\"o\":{},\"l\":{local_now},\"msg\":",
            serde_json::to_string(&*self.instance)?
        );
        let (id, receivers): (u64, u64) = self
            .publish_room
            .key(keys::room_id(msg.room.as_str()))
            .key(keys::room_history(msg.room.as_str()))
            .key(keys::room_epoch(msg.room.as_str()))
            .arg(&before)
            .arg(&after)
            .arg(self.history_cap)
            .arg(keys::room_channel(msg.room.as_str()))
            .arg(env_prefix)
            .arg(&*new_epoch())
            .arg(u64::try_from(self.history_ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(history_cutoff(self.history_ttl).unwrap_or(0))
            .arg(self.conn.publish_command())
            .arg(self.room_ttl_ms)
            .arg(floor)
            .arg(&*epoch)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok((id, receivers as usize))
    }

    pub(super) async fn publish_room_now(
        &self,
        room: RoomName,
        from: UserName,
        text: Arc<str>,
        outage: Outage,
    ) -> Result<Published<ChatMessage>, BusError> {
        let _g = self.stripe(&room).lock().await;
        let mut msg = ChatMessage {
            room: room.clone(),
            from,
            text,
            id: 0,
            ts: now_ms(),
        };
        // Subscribed to the room: its own members get the message from the
        // channel, as every other node's do. The script publishes in id
        // order, and a node that delivered its own at once put them ahead
        // of others' lower ids still on their way (SSE cursors then
        // dropped those). Not subscribed yet: delivered at once, and skipped
        // on receipt.
        let subscribed = self.subscribed(&room);
        let (remote, via_channel) = match self
            .try_redis(self.publish_room_redis(&msg, !subscribed))
            .await
        {
            Some((id, receivers)) => {
                msg.id = id;
                // Subscribers other than this node (subscribed while it holds
                // a member; a push may come from a node holding none). None
                // at all: this node's subscription is gone, not yet noticed.
                let others = receivers.saturating_sub(usize::from(self.holds_room(&room)));
                (others, subscribed && receivers > 0)
            }
            None if outage == Outage::Refuse => return Err(not_taken()),
            None => {
                // Outage: local delivery only, ids continue from the last seen.
                let mut m = lock(&self.mirror);
                let e = m.last_ids.entry(room.clone()).or_insert(0);
                *e = e.saturating_add(1);
                msg.id = *e;
                m.prune();
                (0, false)
            }
        };
        self.note_id(&room, msg.id);
        let local = if via_channel {
            self.local_connections_in(&room)
        } else {
            self.first_delivery(&msg);
            let event = Event::msg(&msg)?;
            self.sink().map(|s| s.to_room(&room, &event)).unwrap_or(0)
        };
        Ok(Published {
            item: msg,
            delivered: local + remote,
        })
    }

    async fn nodes_of(
        &self,
        c: &mut RedisConn,
        user: &UserName,
    ) -> Result<Vec<String>, ClusterError> {
        let (lo, hi) = keys::user_range(user.as_str());
        let entries: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(keys::ONLINE)
            .arg(lo)
            .arg(hi)
            .query_async(c)
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|e| e.split_once('\t').map(|(_, n)| n.to_string()))
            .collect())
    }

    /// Assigns the DM id and publishes to other nodes when needed. Returns how
    /// many connections of the recipient other nodes hold.
    async fn publish_dm_redis(
        &self,
        dm: &mut DirectMessage,
        echo: bool,
    ) -> Result<usize, ClusterError> {
        let mut c = self.conn.clone();
        dm.id = redis::cmd("INCR")
            .arg(keys::DM_ID)
            .query_async(&mut c)
            .await?;
        if dm.id <= self.dm_seen.load(Ordering::Relaxed) {
            // The counter only grows, so Redis lost it (an empty restart not
            // yet noticed by the heartbeat): raise it past what was given out.
            self.floor_dm_id(&mut c).await?;
            dm.id = redis::cmd("INCR")
                .arg(keys::DM_ID)
                .query_async(&mut c)
                .await?;
        }
        let to_nodes = self.nodes_of(&mut c, &dm.to).await?;
        let remote_nodes: Vec<&String> = to_nodes
            .iter()
            .filter(|n| n.as_str() != &*self.instance)
            .collect();
        // The recipient's connections on other nodes, from the registry's
        // counts (refreshed every heartbeat). One `HGET` per node: each
        // node's hash lives on its own shard on Redis Cluster.
        let mut remote_to = 0;
        for n in &remote_nodes {
            let count: Option<u64> = redis::cmd("HGET")
                .arg(keys::node_users(n))
                .arg(dm.to.as_str())
                .query_async(&mut c)
                .await?;
            remote_to += usize::try_from(count.unwrap_or(1)).unwrap_or(1);
        }
        let mut users = vec![dm.to.clone()];
        let mut nodes: BTreeSet<&str> = remote_nodes.iter().map(|n| n.as_str()).collect();
        let from_nodes;
        if echo && dm.from != dm.to {
            users.push(dm.from.clone());
            from_nodes = self.nodes_of(&mut c, &dm.from).await?;
            nodes.extend(from_nodes.iter().map(String::as_str));
        }
        nodes.remove(&*self.instance);
        if !nodes.is_empty() {
            let env = serde_json::to_string(&Envelope::Users {
                o: self.instance.to_string(),
                users,
                dm: dm.clone(),
            })?;
            // One publication per node holding a recipient: each delivers to
            // its own connections, so none is reached twice.
            for n in nodes {
                let _: i64 = redis::cmd(c.publish_command())
                    .arg(keys::node_channel(n))
                    .arg(&env)
                    .query_async(&mut c)
                    .await?;
            }
        }
        Ok(remote_to)
    }

    /// Raises Redis's DM counter to [`dm_seen`](RedisBus), after Redis lost
    /// it. The counter never expires (room TTL 0).
    pub(super) async fn floor_dm_id(&self, c: &mut RedisConn) -> Result<(), ClusterError> {
        let seen = self.dm_seen.load(Ordering::Relaxed);
        if seen > 0 {
            let _: i64 = self
                .id_floor
                .key(keys::DM_ID)
                .arg(seen)
                .arg(0)
                .invoke_async(c)
                .await?;
        }
        Ok(())
    }

    /// Raises [`dm_seen`](RedisBus) to a DM id given out or delivered. Ids
    /// past what Redis's `INCR` can reach (a bad publication: anyone who can
    /// publish may send one) are not taken, or they would stop every later
    /// `INCR` at the floor they set.
    pub(super) fn note_dm_id(&self, id: u64) {
        if id <= MAX_DM_ID {
            self.dm_seen.fetch_max(id, Ordering::Relaxed);
        }
    }

    pub(super) async fn publish_dm_now(
        &self,
        from: UserName,
        to: UserName,
        text: Arc<str>,
        echo: bool,
        outage: Outage,
    ) -> Result<Published<DirectMessage>, BusError> {
        let mut dm = DirectMessage {
            from,
            to,
            text,
            id: 0,
            ts: now_ms(),
        };
        let remote = match self
            .try_redis(async {
                let mut d = dm.clone();
                let r = self.publish_dm_redis(&mut d, echo).await?;
                Ok((d.id, r))
            })
            .await
        {
            Some((id, r)) => {
                dm.id = id;
                self.note_dm_id(id);
                r
            }
            None if outage == Outage::Refuse => return Err(not_taken()),
            None => {
                dm.id = self
                    .dm_seen
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                0
            }
        };
        let event = Event::encode(&dm)?;
        let mut delivered = 0;
        if let Some(sink) = self.sink() {
            delivered = sink.to_users(&[&dm.to], &event);
            if echo && dm.from != dm.to {
                sink.to_users(&[&dm.from], &event);
            }
        }
        Ok(Published {
            item: dm,
            delivered: delivered + remote,
        })
    }
}

/// What a publication does when Redis cannot take it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Outage {
    /// Serve this node's members alone (sessions go on through an outage).
    LocalOnly,
    /// Deliver nothing and say so (a caller that can try again).
    Refuse,
}

fn not_taken() -> BusError {
    BusError::Unavailable("redis did not take the message; it was not delivered".into())
}
