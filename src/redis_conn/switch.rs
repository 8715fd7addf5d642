//! Sentinel's `+switch-master` announcements, followed as they come (as
//! Jedis's sentinel pool and Lettuce do). Without them a connection leaves
//! the old master only when a write on it fails or is answered `READONLY`;
//! a master the sentinels cannot reach, or have not reconfigured yet after a
//! graceful failover, takes every write meanwhile, and the new master never
//! sees them.
//!
//! One sentinel is listened to at a time; when its connection ends, or it
//! stops answering pings, the next one is tried after a backoff.

use std::time::Duration;

use futures_util::StreamExt;

const CHANNEL: &str = "+switch-master";

/// How often a quiet subscription is pinged: a sentinel cut off without a
/// FIN or RST would otherwise look alive until TCP gives up, hours later.
const PING_EVERY: Duration = Duration::from_secs(5);

/// Where to listen and how patiently.
pub(super) struct Watch {
    pub sentinels: Vec<String>,
    pub master: String,
    pub timeout: Duration,
    pub min_retry: Duration,
    pub max_retry: Duration,
}

/// Why one sentinel's subscription ended.
enum Ended {
    /// The connection it serves is gone: stop listening.
    Unwanted,
    /// The sentinel was not reached, or not subscribed to.
    Unreached(String),
    /// The subscription held, then ended.
    Lost(String),
}

/// The shortest wait between sentinels, whatever the settings say: a zero
/// would spin through sentinels that refuse at once.
const MIN_BACKOFF: Duration = Duration::from_millis(50);

/// Listens until `switched` answers `false` (the connection it tells is
/// gone). `switched` gets the new master's address.
pub(super) async fn follow(w: Watch, switched: impl Fn(String, u16) -> bool) {
    if w.sentinels.is_empty() {
        return;
    }
    let first = w.min_retry.max(MIN_BACKOFF);
    let mut backoff = first;
    for url in w.sentinels.iter().cycle() {
        match listen(url, &w, &switched).await {
            Ended::Unwanted => return,
            Ended::Unreached(why) => {
                tracing::debug!(reason = %why, "redis: sentinel not reached for announcements; trying the next")
            }
            // A subscription that held was no failing sentinel.
            Ended::Lost(why) => {
                tracing::debug!(reason = %why, "redis: sentinel announcements lost; trying the next sentinel");
                backoff = first;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(w.max_retry.max(first));
    }
}

async fn listen(url: &str, w: &Watch, switched: &impl Fn(String, u16) -> bool) -> Ended {
    let unreached = |e: redis::RedisError| Ended::Unreached(e.to_string());
    let lost = |e: redis::RedisError| Ended::Lost(e.to_string());
    let client = match redis::Client::open(url) {
        Ok(c) => c,
        Err(e) => return unreached(e),
    };
    let (mut sink, mut stream) =
        match tokio::time::timeout(w.timeout, client.get_async_pubsub()).await {
            Ok(Ok(p)) => p.split(),
            Ok(Err(e)) => return unreached(e),
            Err(_) => return Ended::Unreached("connect timed out".into()),
        };
    match tokio::time::timeout(w.timeout, sink.subscribe(CHANNEL)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return unreached(e),
        Err(_) => return Ended::Unreached("subscribe timed out".into()),
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Ended::Lost("connection closed".into());
                };
                let Some((host, port)) = announced(msg.get_payload_bytes(), &w.master) else {
                    continue;
                };
                tracing::info!(%host, port, "redis: the sentinels switched the master");
                if !switched(host, port) {
                    return Ended::Unwanted;
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(w.timeout, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return lost(e),
                    Err(_) => return Ended::Lost("ping timed out".into()),
                }
            }
        }
    }
}

/// The new master's address in a `+switch-master` payload
/// (`<name> <old-ip> <old-port> <new-ip> <new-port>`) about `master`.
fn announced(payload: &[u8], master: &str) -> Option<(String, u16)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut words = text.split(' ');
    if words.next()? != master {
        return None;
    }
    let mut rest = words.skip(2);
    let host = rest.next()?;
    let port = rest.next()?.parse().ok()?;
    if host.is_empty() || rest.next().is_some() {
        return None;
    }
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::announced;

    #[test]
    fn the_new_address_of_our_master_is_read() {
        assert_eq!(
            announced(b"mymaster 127.0.0.1 6379 127.0.0.1 6380", "mymaster"),
            Some(("127.0.0.1".to_string(), 6380))
        );
        assert_eq!(
            announced(b"other 127.0.0.1 6379 127.0.0.1 6380", "mymaster"),
            None
        );
        for bad in [
            &b"mymaster 127.0.0.1 6379 127.0.0.1"[..],
            b"mymaster 127.0.0.1 6379 127.0.0.1 port",
            b"mymaster 127.0.0.1 6379 127.0.0.1 6380 extra",
            b"mymaster 127.0.0.1 6379  6380",
            b"\xff",
        ] {
            assert_eq!(announced(bad, "mymaster"), None, "{bad:?}");
        }
    }
}
