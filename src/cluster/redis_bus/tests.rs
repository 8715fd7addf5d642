//! Unit tests of the pure parts: the id splice and envelope decoding, and the
//! keys' hash tags. The bus against a real Redis is tested in `tests/it/cluster.rs`.

use std::sync::Arc;

use super::envelope::{split_at_id, Envelope};
use crate::apps::chat::protocol::{ChatMessage, RoomName, UserName};

#[test]
fn the_id_is_spliced_into_the_stored_json() {
    let msg = ChatMessage {
        room: RoomName::parse("lobby").unwrap(),
        from: UserName::parse("alice").unwrap(),
        text: Arc::from(r#"tricky "id":18446744073709551615 } text"#),
        id: 0,
        ts: 7,
    };
    let (before, after) = split_at_id(&msg).unwrap();
    let json = format!("{before}42{after}");
    let back: ChatMessage = serde_json::from_str(&json).unwrap();
    assert_eq!(back.id, 42);
    assert_eq!(back.text, msg.text);
    // And the envelope the script builds around it decodes.
    let env = format!(r#"{{"k":"msg","o":"n1","msg":{json}}}"#);
    match serde_json::from_str::<Envelope>(&env).unwrap() {
        Envelope::Msg { o, l, msg } => assert_eq!((o.as_str(), l, msg.id), ("n1", false, 42)),
        other => panic!("{other:?}"),
    }
}

/// Two processes of one `node_id` (a binary upgrade) are two cluster
/// identities, and clients are shown the name either way.
#[test]
fn processes_of_one_name_are_told_apart() {
    let (old, new) = (super::instance("n1", 10), super::instance("n1", 11));
    assert_ne!(old, new);
    assert_eq!((super::shown(&old), super::shown(&new)), ("n1", "n1"));
    assert_eq!(super::shown(&super::instance("a#b", 3)), "a#b");
}

/// Counts what reaches the node's members.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicUsize);

impl crate::apps::chat::bus::Deliver for Count {
    fn to_room(&self, _: &RoomName, _: &crate::apps::chat::protocol::Event) -> usize {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        1
    }
    fn to_users(&self, _: &[&UserName], _: &crate::apps::chat::protocol::Event) -> usize {
        0
    }
}

/// A room message that arrives twice in a row (seen after a master of the
/// room's slot restarted) reaches the members once; the next one, and an
/// older message's own id and time (a new epoch), still arrive.
#[tokio::test]
async fn a_room_message_received_twice_is_delivered_once() {
    use crate::apps::chat::bus::{Bus, Deliver};
    let cfg = crate::config::ClusterConfig {
        redis: crate::config::RedisTarget::Single("redis://127.0.0.1:1".into()),
        heartbeat: std::time::Duration::from_secs(60),
        room_ttl: std::time::Duration::from_secs(60),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let bus = super::RedisBus::start(&cfg, "n1", 10, std::time::Duration::ZERO, stop.clone())
        .expect("bus");
    let count = Arc::new(Count::default());
    let sink: Arc<dyn Deliver> = count.clone();
    bus.attach(Arc::downgrade(&sink));
    let lobby = RoomName::parse("lobby").expect("room");
    // A member here: the node keeps its place in rooms it has members in.
    super::mirror::lock(&bus.mirror).add_member(&lobby, &UserName::parse("bob").expect("user"));
    let env = |id: u64, ts: u64| {
        format!(
            r#"{{"k":"msg","o":"n2#7","l":false,"msg":{{"room":"lobby","from":"alice","text":"hi","id":{id},"ts":{ts}}}}}"#
        )
    };
    let delivered = || count.0.load(std::sync::atomic::Ordering::SeqCst);
    bus.on_envelope(env(5, 100).as_bytes()).await;
    bus.on_envelope(env(5, 100).as_bytes()).await;
    assert_eq!(delivered(), 1);
    bus.on_envelope(env(6, 101).as_bytes()).await;
    assert_eq!(delivered(), 2);
    bus.on_envelope(env(1, 200).as_bytes()).await;
    assert_eq!(delivered(), 3);
    // An id no `INCR` reaches (a forged publication) is not the room's head:
    // the publish script would count on from it in Lua's doubles.
    bus.note_id(&lobby, u64::MAX);
    assert_eq!(bus.known_head(&lobby).0, 6);
    stop.cancel();
}
