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
