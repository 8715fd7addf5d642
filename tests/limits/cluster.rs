//! Cluster scope: two nodes sharing one budget in a real `redis-server`, each
//! falling back to its own while Redis is away.

use http::StatusCode;

use super::{get_from, limit, retry_after};
use crate::common::redis::Redis;
use crate::common::{self, get, Cfg, Route, TestGateway, WAIT};

/// A node sharing `redis` with a cluster-scope limit `shared` (1/m, burst 4)
/// on `/c`.
async fn cluster_node(id: &str, redis: &Redis) -> TestGateway {
    let toml = limit(Cfg::new(), "shared", "1/m", 4, "ip")
        .set("limit.shared.scope", "cluster")
        .set("server.node_id", id)
        .set("log.access_log", false)
        .set("cluster.redis", redis.url())
        .set("cluster.heartbeat", "200ms")
        .listener_plain()
        .admin()
        .route(Route::app("/c", "echo").set("limits", vec!["shared"]))
        .build();
    let gw = TestGateway::start(&toml).await;
    let admin = gw.admin();
    assert!(
        common::eventually(WAIT, || async move {
            get(admin, "/readyz").await.status == StatusCode::OK
        })
        .await,
        "node {id} never became ready"
    );
    gw
}

async fn readyz(gw: &TestGateway) -> String {
    get(gw.admin(), "/readyz").await.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scope_shares_one_budget_and_falls_back_per_node() {
    let mut redis = Redis::start().await;
    let a = cluster_node("lim-a", &redis).await;
    let b = cluster_node("lim-b", &redis).await;

    // Four tokens for the whole cluster: two spent on each node.
    for gw in [&a, &b, &a, &b] {
        assert_eq!(
            get(gw.http(), "/c").await.status,
            StatusCode::UPGRADE_REQUIRED
        );
    }
    for gw in [&a, &b] {
        let r = get(gw.http(), "/c").await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
        let wait = retry_after(&r);
        assert!((59..=60).contains(&wait), "Retry-After {wait}");
    }
    // Each node tracked nothing of its own: the buckets are in Redis.
    assert_eq!(a.handle.limiter("shared").expect("limit").tracked_keys(), 0);

    // Redis goes away: each node decides alone (a fresh local budget), and
    // says so in /readyz.
    redis.kill();
    for _ in 0..4 {
        assert_eq!(
            get(a.http(), "/c").await.status,
            StatusCode::UPGRADE_REQUIRED
        );
    }
    assert_eq!(
        get(a.http(), "/c").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    let why = readyz(&a).await;
    assert!(
        why.contains("degraded") && why.contains("rate limits per node (redis unreachable)"),
        "{why}"
    );

    // Redis is back (empty): the probe finds it and the limits leave /readyz.
    redis.spawn().await;
    assert!(
        common::eventually(WAIT, || async {
            !readyz(&a).await.contains("rate limits per node")
        })
        .await,
        "{}",
        readyz(&a).await
    );
    // Each node finds Redis again on its next decision (from another address,
    // so the budget under test stays untouched).
    for gw in [&a, &b] {
        assert!(
            common::eventually(WAIT, || async {
                get_from("127.0.0.9", gw.http(), "/c").await;
                !readyz(gw).await.contains("rate limits per node")
            })
            .await,
            "{}",
            readyz(gw).await
        );
    }
    // And decisions are shared again: the restarted Redis has a full bucket.
    for gw in [&a, &b, &a, &b] {
        assert_eq!(
            get(gw.http(), "/c").await.status,
            StatusCode::UPGRADE_REQUIRED
        );
    }
    assert_eq!(
        get(b.http(), "/c").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}
