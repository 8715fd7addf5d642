//! Per-room subscriptions on one Redis (docs/cluster.md): a node subscribes
//! to a room's channel only while it holds a member of the room, so it
//! receives none of the traffic of other rooms; and the Redis work per room
//! message, measured from `INFO commandstats`, is constant.

use crate::cluster::Node;
use crate::common;

use common::chat::{is_msg, is_presence, Client};
use common::redis::{stats_delta, Redis};
use common::{eventually, WAIT};
use serde_json::json;

/// The channel of `room` (keys::room_channel).
fn channel(room: &str) -> String {
    format!("wsgate:room:{{{room}}}:events")
}

async fn numsub_becomes(redis: &Redis, room: &str, want: i64) {
    let ch = channel(room);
    assert!(
        eventually(WAIT, || {
            let ch = ch.clone();
            async move { redis.numsub(&ch).await == want }
        })
        .await,
        "{ch}: {} subscribers, want {want}",
        redis.numsub(&ch).await
    );
}

#[tokio::test]
async fn a_node_subscribes_only_to_rooms_it_has_members_in() {
    let redis = Redis::start().await;
    let a = Node::start("na", &redis).await;
    let b = Node::start("nb", &redis).await;
    let mut alice = Client::new(a.addr(), "alice").await;
    let mut bob = Client::new(b.addr(), "bob").await;
    alice.join("quiet").await;
    bob.join("lobby").await;
    // Subscribed before the join is acknowledged: no polling needed.
    assert_eq!(redis.numsub(&channel("quiet")).await, 1, "only node A");
    assert_eq!(redis.numsub(&channel("lobby")).await, 1, "only node B");

    // Traffic of `quiet` reaches one subscriber: node B receives none of it.
    for i in 0..5 {
        alice.msg("quiet", &format!("q{i}")).await;
    }
    alice.recv_until("own q4", |v| is_msg(v, "q4")).await;

    // Bob joins `quiet`: node B subscribes, and gets the room's traffic.
    bob.join("quiet").await;
    assert_eq!(redis.numsub(&channel("quiet")).await, 2);
    alice
        .recv_until("bob joins", |v| is_presence(v, "bob", "join"))
        .await;
    alice.msg("quiet", "now both").await;
    bob.recv_until("alice's message", |v| is_msg(v, "now both"))
        .await;

    // A second member on node B: still one subscription of that node.
    let mut bob2 = Client::new(b.addr(), "bob2").await;
    bob2.join("quiet").await;
    assert_eq!(redis.numsub(&channel("quiet")).await, 2);

    // The last member of node B leaves: node B unsubscribes.
    bob.send(json!({"type":"leave","room":"quiet"})).await;
    bob2.send(json!({"type":"leave","room":"quiet"})).await;
    numsub_becomes(&redis, "quiet", 1).await;
    alice
        .recv_until("bob2 leaves", |v| is_presence(v, "bob2", "leave"))
        .await;
    // Node B still serves its other room.
    alice.join("lobby").await;
    bob.recv_until("alice joins lobby", |v| is_presence(v, "alice", "join"))
        .await;
    drop(alice);
    numsub_becomes(&redis, "quiet", 0).await;
    numsub_becomes(&redis, "lobby", 1).await;
}

#[tokio::test]
async fn redis_work_per_room_message_is_constant() {
    let redis = Redis::start().await;
    let a = Node::start("na", &redis).await;
    let b = Node::start("nb", &redis).await;
    let c = Node::start("nc", &redis).await;
    let mut alice = Client::new(a.addr(), "alice").await;
    alice.join("lobby").await;
    let mut others = Vec::new();
    for (i, n) in [&a, &b, &c].into_iter().enumerate() {
        for j in 0..3 {
            let mut u = Client::new(n.addr(), &format!("u{i}x{j}")).await;
            u.join("lobby").await;
            others.push(u);
        }
    }
    // Loads the script (a first EVALSHA answers NOSCRIPT).
    alice.msg("lobby", "warm-up").await;
    for u in others.iter_mut() {
        u.recv_until("the warm-up", |v| is_msg(v, "warm-up")).await;
    }
    const N: u64 = 50;
    let before = redis.commandstats().await;
    for i in 0..N {
        alice.msg("lobby", &format!("m{i}")).await;
    }
    for u in others.iter_mut() {
        u.recv_until("the last message", |v| is_msg(v, &format!("m{}", N - 1)))
            .await;
    }
    let delta = stats_delta(&before, &redis.commandstats().await);
    // Only the per-message commands (the heartbeat's are other commands).
    let per: Vec<(String, f64)> = ["evalsha", "incr", "rpush", "ltrim", "publish"]
        .iter()
        .map(|k| {
            (
                k.to_string(),
                *delta.get(*k).unwrap_or(&0) as f64 / N as f64,
            )
        })
        .collect();
    eprintln!(
        "redis commands per room message (10 members on 3 nodes): {per:?}; \
         EVALSHA CPU {:.1} µs per message",
        *delta.get("evalsha.usec").unwrap_or(&0) as f64 / N as f64
    );
    for (k, v) in &per {
        assert!((*v - 1.0).abs() < f64::EPSILON, "{k}: {v} per message");
    }
}
