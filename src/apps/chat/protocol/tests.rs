//! Unit tests of the wire protocol: names, client frame parsing, server frame
//! encoding and cursors.

use serde_json::Value;

use super::*;

fn parse(s: &str) -> Result<ClientFrame, ChatError> {
    ClientFrame::parse(s.as_bytes(), 16)
}

#[test]
fn names() {
    assert!(UserName::parse("alice.B-2_x").is_ok());
    assert!(UserName::parse("").is_err());
    assert!(UserName::parse(&"a".repeat(33)).is_err());
    assert!(UserName::parse(&"a".repeat(32)).is_ok());
    assert!(UserName::parse("a b").is_err());
    assert!(UserName::parse("é").is_err());
    let g = UserName::guest();
    assert!(g.as_str().starts_with("guest-") && UserName::parse(g.as_str()).is_ok());
    assert!(serde_json::from_str::<UserName>("\"bad name\"").is_err());
}

#[test]
fn frames() {
    let room = RoomName::parse("r").unwrap();
    assert_eq!(
        parse(r#"{"type":"join","room":"r"}"#).unwrap(),
        ClientFrame::Join {
            room: room.clone(),
            since: None
        }
    );
    assert_eq!(
        parse(r#"{"type":"join","room":"r","since":7,"epoch":"ab"}"#).unwrap(),
        ClientFrame::Join {
            room: room.clone(),
            since: Some(Since {
                offset: 7,
                epoch: Some("ab".into())
            })
        }
    );
    assert_eq!(
        parse(r#"{"type":"msg","room":"r","text":"hi","extra":1}"#).unwrap(),
        ClientFrame::Msg {
            room: room.clone(),
            text: "hi".into()
        }
    );
    assert_eq!(
        parse(r#"{"type":"history","room":"r"}"#).unwrap(),
        ClientFrame::History { room, limit: 50 }
    );
    let code = |s: &str| parse(s).unwrap_err().code();
    assert_eq!(code("nope"), "bad_json");
    assert_eq!(code("[1]"), "bad_json");
    assert_eq!(code(r#"{"room":"r"}"#), "missing_type");
    assert_eq!(code(r#"{"type":"shout"}"#), "unknown_type");
    assert_eq!(code(r#"{"type":"msg","room":"r"}"#), "missing_field");
    assert_eq!(code(r#"{"type":"msg","room":"r","text":5}"#), "bad_field");
    assert_eq!(code(r#"{"type":"msg","room":"r","text":""}"#), "bad_field");
    assert_eq!(code(r#"{"type":"join","room":"a b"}"#), "invalid_room");
    assert_eq!(code(r#"{"type":"dm","to":"","text":"x"}"#), "invalid_user");
    assert_eq!(
        code(r#"{"type":"msg","room":"r","text":"0123456789abcdefX"}"#),
        "too_large"
    );
    assert_eq!(
        code(r#"{"type":"history","room":"r","limit":-1}"#),
        "bad_field"
    );
    let huge = format!(
        r#"{{"type":"msg","room":"r","text":"{}"}}"#,
        "x".repeat(5000)
    );
    assert_eq!(code(&huge), "too_large");
}

#[test]
fn server_frames_are_tagged() {
    let m = ChatMessage {
        room: RoomName::parse("r").unwrap(),
        from: UserName::parse("u").unwrap(),
        text: "t".into(),
        id: 3,
        ts: 9,
    };
    let v: Value = serde_json::to_value(&m).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"type":"msg","room":"r","from":"u","text":"t","id":3,"ts":9})
    );
    assert_eq!(serde_json::from_value::<ChatMessage>(v).unwrap(), m);
    let e = Event::error(&ChatError::MissingField("room"));
    assert_eq!(
        e.text(),
        r#"{"type":"error","code":"missing_field","message":"missing field \"room\""}"#
    );
}

#[test]
fn cursors_round_trip() {
    let c = Cursor::parse("lobby:42,dev.x:7,@99").unwrap();
    assert_eq!(c.rooms.len(), 2);
    assert_eq!(c.live, Some(99));
    assert_eq!(Cursor::parse(&c.to_string()).unwrap(), c);
    assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
    let e = Cursor::parse("lobby:42:k3j9x0ab,dev:7").unwrap();
    assert_eq!(
        e.epochs
            .get(&RoomName::parse("lobby").unwrap())
            .map(String::as_str),
        Some("k3j9x0ab")
    );
    assert_eq!(e.to_string(), "dev:7,lobby:42:k3j9x0ab");
    assert!(Cursor::parse("lobby:4:bad epoch").is_err());
    assert!(Cursor::parse("lobby").is_err());
    assert!(Cursor::parse("lobby:x").is_err());
    assert!(Cursor::parse("a b:1").is_err());
    assert_eq!(parse_rooms("a,,b,a", 2).unwrap().len(), 2);
    assert!(parse_rooms("a,b c", 2).is_err());
    let e = parse_rooms("a,b,a,c", 2).unwrap_err();
    assert!(matches!(e, ChatError::RoomsPerConnection(2)), "{e}");
}

#[test]
fn messages_quote_names_without_debug_formatting() {
    let room = RoomName::parse("fb").unwrap();
    let user = UserName::parse("bob").unwrap();
    assert_eq!(
        ChatError::NotJoined(room).to_string(),
        r#"not in room "fb": join it first"#
    );
    assert_eq!(
        ChatError::UserOffline(user.clone()).to_string(),
        r#"user "bob" is not online"#
    );
    assert_eq!(
        ChatError::NoStream(user).to_string(),
        r#"user "bob" has no SSE stream or poll session here to join or leave rooms with"#
    );
    assert_eq!(
        Event::error(&ChatError::NotJoined(RoomName::parse("dev").unwrap())).text(),
        r#"{"type":"error","code":"not_joined","message":"not in room \"dev\": join it first"}"#
    );
    // Raw client input is still quoted and escaped.
    assert_eq!(
        ChatError::from(UserName::parse("a\"b").unwrap_err()).to_string(),
        r#"invalid user name "a\"b": use 1-32 of A-Z a-z 0-9 _ . -"#
    );
}
