//! Liveness: the heartbeat task (this node's alive key and registry TTLs,
//! subscription, connection counts), re-registration of the mirror after Redis
//! lost it or swept this node, and the sweeper that removes dead nodes and
//! announces their users' leaves.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::redis_conn::RedisConn;
use tokio_util::sync::CancellationToken;

use super::mirror::lock;
use super::{ms, ClusterError, RedisBus};
use crate::apps::chat::protocol::{now_ms, RoomName, UserName};
use crate::cluster::keys;

/// Entries written per pipeline when re-registering.
const BATCH: usize = 500;
/// A sweep looks whether its node beats again before every this many leaves.
const SWEEP_LOOK: usize = 32;

/// When the heartbeat last subscribed this node's channels: at which count
/// of downs ([`RedisBus::downs`]). Every down may have dropped the connection
/// that held them, and a dropped connection's subscriptions are gone.
#[derive(Debug, Default)]
struct Subscriptions {
    at: Option<u64>,
}

impl Subscriptions {
    /// Whether they must be made again: never made, or a down came since.
    fn stale(&self, downs: u64) -> bool {
        self.at != Some(downs)
    }

    fn made(&mut self, downs: u64) {
        self.at = Some(downs);
    }
}

impl RedisBus {
    pub(super) async fn run_heartbeat(self: Arc<Self>, stop: CancellationToken) {
        let tick = self.beat / 2;
        let mut subscribed = Subscriptions::default();
        let mut reregister = true;
        let mut backoff = Duration::from_millis(50);
        loop {
            let downs = self.downs.load(Ordering::Acquire);
            match self
                .beat_once(downs, &mut subscribed, &mut reregister)
                .await
            {
                // Marked down meanwhile: this beat may have subscribed on
                // the connection that went; the next one subscribes again.
                Ok(()) if self.downs.load(Ordering::Acquire) != downs => {}
                Ok(()) => {
                    self.set_up();
                    backoff = Duration::from_millis(50);
                }
                Err(e) => {
                    tracing::debug!(node = %self.instance, error = %e, "cluster: heartbeat failed");
                    self.set_down(&e);
                    reregister = true;
                }
            }
            let wait = if self.is_up() {
                tick
            } else {
                backoff = (backoff * 2).min(self.beat);
                backoff
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One beat; `downs` is [`RedisBus::downs`] as it began.
    async fn beat_once(
        &self,
        downs: u64,
        subscribed: &mut Subscriptions,
        reregister: &mut bool,
    ) -> Result<(), ClusterError> {
        let mut c = self.conn.clone();
        tracing::trace!(node = %self.instance, "cluster: beat");
        // First, before any work that grows with the node's size: a node
        // busy resubscribing or re-registering is alive, not to be swept.
        let prev: Option<String> = redis::cmd("SET")
            .arg(keys::alive(&self.instance))
            .arg(now_ms())
            .arg("PX")
            .arg(ms(self.beat * 3))
            .arg("GET")
            .query_async(&mut c)
            .await?;
        let mut alive = Instant::now();
        // After any outage (a dropped connection marks Redis down), every
        // channel is subscribed again: on a Redis Cluster a failed-over
        // shard's channels must move to its new master, which the client
        // only does when it happens to refresh its slot map after the
        // promotion. Subscribing twice is harmless.
        if subscribed.stale(downs) {
            c.subscribe(&keys::node_channel(&self.instance)).await?;
            self.resubscribe_held().await?;
            subscribed.made(downs);
        }
        let _: i64 = redis::cmd("SADD")
            .arg(keys::NODES)
            .arg(&*self.instance)
            .query_async(&mut c)
            .await?;
        // Taken whatever happens below: a call falling back from here on
        // sets it again, for the next beat.
        let unsynced = self.unsynced.swap(false, Ordering::AcqRel);
        // Our alive key was gone (Redis restarted, or we were swept as
        // dead), or a join or leave reached only the mirror.
        if prev.is_none() || *reregister || unsynced {
            self.reregister(&mut c, &mut alive).await?;
            // A sweep of this node that may still run (its claim lasts 3
            // beats) removes entries as they are written: again next beat.
            let swept: bool = redis::cmd("EXISTS")
                .arg(keys::sweep_claim(&self.instance))
                .query_async(&mut c)
                .await?;
            *reregister = swept;
        } else if self.ticks.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
            self.sync_users(&mut c).await?;
        }
        self.reconcile_subs().await?;
        self.sweep_dead(&mut c, &mut alive).await
    }

    /// Refreshes this node's alive key when half a beat has passed since
    /// `last`: work proportional to the memberships of a large node (its
    /// re-registration, a dead node's sweep) can outlast the key's three
    /// beats, and a node swept while it works re-registers, and is swept
    /// again, without end.
    async fn keep_alive(&self, c: &mut RedisConn, last: &mut Instant) -> Result<(), ClusterError> {
        if last.elapsed() < self.beat / 2 {
            return Ok(());
        }
        let _: () = redis::cmd("SET")
            .arg(keys::alive(&self.instance))
            .arg(now_ms())
            .arg("PX")
            .arg(ms(self.beat * 3))
            .query_async(c)
            .await?;
        *last = Instant::now();
        Ok(())
    }

    /// Writes this node's users with their connection counts (`HSET` into its
    /// users hash, `ZADD` into the online set) in pipelined batches, and removes
    /// users Redis still has but this node no longer does. Runs once per
    /// heartbeat: connection counts are refreshed here, never per message.
    async fn sync_users(&self, c: &mut RedisConn) -> Result<(), ClusterError> {
        let node = &*self.instance;
        // Redis's list first, the node's own after it: a user who connects
        // in between is in both (kept); read the other way round, such a
        // user's HSET could land between the reads and be taken for stale.
        let stored: Vec<String> = redis::cmd("HKEYS")
            .arg(keys::node_users(node))
            .query_async(c)
            .await?;
        let users: Vec<UserName> = lock(&self.mirror).users.iter().cloned().collect();
        let sink = self.sink();
        let current: HashSet<&str> = users.iter().map(|u| u.as_str()).collect();
        let stale: Vec<&String> = stored
            .iter()
            .filter(|u| !current.contains(u.as_str()))
            .collect();
        for chunk in stale.chunks(BATCH) {
            let mut online = redis::pipe();
            let mut mine = redis::pipe();
            for u in chunk {
                online.zrem(keys::ONLINE, keys::user_at(u, node)).ignore();
                mine.hdel(keys::node_users(node), u.as_str()).ignore();
            }
            let _: () = online.query_async(c).await?;
            let _: () = mine.query_async(c).await?;
        }
        for chunk in users.chunks(BATCH) {
            // One pipeline per shard: the online set, and this node's hash.
            let mut online = redis::pipe();
            let mut mine = redis::pipe();
            for u in chunk {
                let n = sink.as_ref().map(|s| s.connections(u)).unwrap_or(0).max(1);
                mine.hset(keys::node_users(node), u.as_str(), n).ignore();
                online
                    .zadd(keys::ONLINE, keys::user_at(u.as_str(), node), 0)
                    .ignore();
            }
            let _: () = online.query_async(c).await?;
            let _: () = mine.query_async(c).await?;
        }
        Ok(())
    }

    /// Makes Redis agree with this node's mirror: entries it no longer has are
    /// removed (announcing leaves), the rest (re-)added. Joins and leaves go
    /// on meanwhile: each entry is decided under its room's stripe, which
    /// they hold across their own change and write, by what the mirror says
    /// then (a snapshot's word would undo a leave, or a join, made since).
    async fn reregister(&self, c: &mut RedisConn, alive: &mut Instant) -> Result<(), ClusterError> {
        let node = &*self.instance;
        // Redis's list before the mirror's: a join written in between is in
        // both, not taken for one to remove.
        let stored: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::node_rooms(node))
            .query_async(c)
            .await?;
        let (users, rooms, last_ids) = {
            let m = lock(&self.mirror);
            (m.users.clone(), m.rooms.clone(), m.last_ids.clone())
        };
        for (room, id) in &last_ids {
            let _: i64 = self
                .id_floor
                .key(keys::room_id(room.as_str()))
                .arg(*id)
                .arg(self.room_ttl_ms)
                .invoke_async(c)
                .await?;
            self.keep_alive(c, alive).await?;
        }
        self.floor_dm_id(c).await?;
        for entry in stored {
            let Some((room, user)) = entry.split_once('\t') else {
                continue;
            };
            let (Ok(r), Ok(u)) = (RoomName::parse(room), UserName::parse(user)) else {
                continue;
            };
            let entry = (r, u);
            if !rooms.contains(&entry) {
                let _stripe = self.stripe(&entry.0).lock().await;
                if !lock(&self.mirror).rooms.contains(&entry) {
                    self.run_leave(c, node, node, &entry.0, &entry.1).await?;
                }
            }
            self.keep_alive(c, alive).await?;
        }
        for entry in &rooms {
            {
                let _stripe = self.stripe(&entry.0).lock().await;
                if lock(&self.mirror).rooms.contains(entry) {
                    self.run_join(c, &entry.0, &entry.1).await?;
                }
            }
            self.keep_alive(c, alive).await?;
        }
        self.sync_users(c).await?;
        tracing::info!(
            node,
            users = users.len(),
            memberships = rooms.len(),
            "cluster: registered"
        );
        Ok(())
    }

    /// Finds nodes whose alive key expired and, holding the claim, removes their
    /// users and announces their leaves (origin "", so every node delivers).
    async fn sweep_dead(&self, c: &mut RedisConn, alive: &mut Instant) -> Result<(), ClusterError> {
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::NODES)
            .query_async(c)
            .await?;
        for dead in nodes.iter().filter(|n| n.as_str() != &*self.instance) {
            if self.is_alive(c, dead).await? {
                continue;
            }
            let claimed: Option<String> = redis::cmd("SET")
                .arg(keys::sweep_claim(dead))
                .arg(&*self.instance)
                .arg("NX")
                .arg("PX")
                .arg(ms(self.beat * 3))
                .query_async(c)
                .await?;
            if claimed.is_none() {
                continue;
            }
            self.sweep_node(c, dead, alive).await?;
        }
        Ok(())
    }

    /// Is `node` beating (its alive key there)?
    async fn is_alive(&self, c: &mut RedisConn, node: &str) -> Result<bool, ClusterError> {
        let alive: bool = redis::cmd("EXISTS")
            .arg(keys::alive(node))
            .query_async(c)
            .await?;
        Ok(alive)
    }

    /// Removes each of a dead node's memberships, the user's last one in a
    /// room announcing the leave, then the node's memberships set: how many
    /// leaves were announced, and whether it got through (not if the node
    /// beats again meanwhile, which re-registers what it holds itself).
    async fn sweep_memberships(
        &self,
        c: &mut RedisConn,
        dead: &str,
        alive: &mut Instant,
    ) -> Result<(usize, bool), ClusterError> {
        let entries: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::node_rooms(dead))
            .query_async(c)
            .await?;
        let mut announced = 0;
        for (i, entry) in entries.iter().enumerate() {
            // Looked at often: each entry removed after the node re-added it
            // is lost (it re-registers once more after the claim expires).
            if i % SWEEP_LOOK == 0 && self.is_alive(c, dead).await? {
                return Ok((announced, false));
            }
            let Some((room, user)) = entry.split_once('\t') else {
                continue;
            };
            let (Ok(r), Ok(u)) = (RoomName::parse(room), UserName::parse(user)) else {
                continue;
            };
            if self.run_leave(c, dead, "", &r, &u).await? {
                announced += 1;
            }
            self.keep_alive(c, alive).await?;
        }
        // The set goes only while the node is still dead, in one step with
        // that look (one hash tag: one shard).
        let gone: i64 = self
            .forget_dead
            .key(keys::alive(dead))
            .key(keys::node_rooms(dead))
            .invoke_async(c)
            .await?;
        Ok((announced, gone == 1))
    }

    /// Removes a dead node: its users leave the online registry first (so a
    /// client hearing the leave already finds them gone), then each of its
    /// memberships is removed, the user's last one announcing the leave.
    async fn sweep_node(
        &self,
        c: &mut RedisConn,
        dead: &str,
        alive: &mut Instant,
    ) -> Result<(), ClusterError> {
        let users: Vec<String> = redis::cmd("HKEYS")
            .arg(keys::node_users(dead))
            .query_async(c)
            .await?;
        for chunk in users.chunks(BATCH) {
            let mut p = redis::pipe();
            for u in chunk {
                p.zrem(keys::ONLINE, keys::user_at(u, dead)).ignore();
            }
            let _: () = p.query_async(c).await?;
        }
        let _: i64 = redis::cmd("DEL")
            .arg(keys::node_users(dead))
            .query_async(c)
            .await?;
        let (announced, done) = self.sweep_memberships(c, dead, alive).await?;
        if !done {
            tracing::info!(node = %self.instance, dead, announced, "cluster: a node being swept came back; sweep stopped");
            return Ok(());
        }
        let _: i64 = redis::cmd("SREM")
            .arg(keys::NODES)
            .arg(dead)
            .query_async(c)
            .await?;
        tracing::warn!(
            node = %self.instance,
            dead,
            users = users.len(),
            announced,
            "cluster: swept a dead node"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Subscriptions;

    #[test]
    fn subscriptions_are_made_again_after_any_down_since() {
        let mut s = Subscriptions::default();
        assert!(s.stale(0), "never made");
        s.made(3);
        assert!(!s.stale(3));
        // A down while the beat ran: the count it began from is behind.
        assert!(s.stale(4));
    }
}
