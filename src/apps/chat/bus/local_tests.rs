//! Unit tests of the single-node bus: ids, the history ring, presence, rooms
//! dropped once empty, and idle rooms forgotten to stay within the room cap
//! and the history memory.

use std::time::Duration;

use super::*;

/// The default `app.chat.max_rooms`.
const MAX_ROOMS: usize = 10_000;

/// Records what the bus delivers.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Deliver for Recorder {
    fn to_room(&self, room: &RoomName, event: &Event) -> usize {
        lock(&self.0).push(format!("{room} {}", event.text()));
        1
    }
    fn to_users(&self, users: &[&UserName], event: &Event) -> usize {
        lock(&self.0).push(format!("{users:?} {}", event.text()));
        users.len()
    }
}

fn n(s: &str) -> (RoomName, UserName) {
    (RoomName::parse(s).unwrap(), UserName::parse(s).unwrap())
}

#[tokio::test]
async fn ids_history_ring_and_presence() {
    let bus = LocalBus::new("n1", 3, Duration::ZERO, u64::MAX, MAX_ROOMS);
    let rec = Arc::new(Recorder::default());
    let sink: Arc<dyn Deliver> = rec.clone();
    bus.attach(Arc::downgrade(&sink));
    let (room, user) = n("a");
    assert!(bus.room_join(room.clone(), user.clone()).await.unwrap());
    assert!(!bus.room_join(room.clone(), user.clone()).await.unwrap());
    for i in 1..=5 {
        let p = bus
            .publish_room(room.clone(), user.clone(), format!("m{i}").into())
            .await
            .unwrap();
        assert_eq!(p.item.id, i);
    }
    let h = bus.history(room.clone(), 0, 10).await.unwrap();
    assert_eq!(h.iter().map(|m| m.id).collect::<Vec<_>>(), vec![3, 4, 5]);
    let h = bus.history(room.clone(), 3, 1).await.unwrap();
    assert_eq!(h.iter().map(|m| m.id).collect::<Vec<_>>(), vec![5]);
    let heads = bus.heads(vec![room.clone(), n("zz").0]).await.unwrap();
    assert_eq!(
        heads.iter().map(|h| h.offset).collect::<Vec<_>>(),
        vec![5, 0]
    );
    // One process, one history stream: every room shares the epoch.
    assert_eq!(heads[0].epoch, heads[1].epoch);
    assert!(bus.room_leave(room.clone(), user.clone()).await.unwrap());
    assert!(!bus.room_leave(room.clone(), user.clone()).await.unwrap());
    // The room had messages, so it stays (ids keep increasing).
    assert_eq!(
        bus.publish_room(room.clone(), user, "again".into())
            .await
            .unwrap()
            .item
            .id,
        6
    );
    let log = lock(&rec.0);
    assert_eq!(log.len(), 1 + 5 + 1 + 1);
    assert!(log[0].contains(r#""state":"join""#));
}

#[tokio::test]
async fn empty_rooms_are_dropped() {
    let bus = LocalBus::new("n1", 3, Duration::ZERO, u64::MAX, MAX_ROOMS);
    let (room, user) = n("b");
    bus.room_join(room.clone(), user.clone()).await.unwrap();
    assert_eq!(bus.rooms.len(), 1);
    bus.room_leave(room, user).await.unwrap();
    assert_eq!(bus.rooms.len(), 0);
}

fn room(i: usize) -> RoomName {
    RoomName::parse(&format!("r{i}")).unwrap()
}

#[tokio::test]
async fn at_the_room_cap_idle_rooms_are_forgotten_oldest_first() {
    let bus = LocalBus::new("n1", 3, Duration::ZERO, u64::MAX, MAX_ROOMS);
    let (_, user) = n("u");
    let kept = n("kept").0;
    bus.room_join(kept.clone(), user.clone()).await.unwrap();
    let old_epoch = bus.heads(vec![room(0)]).await.unwrap()[0].epoch.clone();
    for i in 0..MAX_ROOMS - 1 {
        bus.publish_room(room(i), user.clone(), "x".into())
            .await
            .unwrap();
    }
    assert_eq!(bus.rooms.len(), MAX_ROOMS);
    // One room more: rooms without members, least recently used first, go.
    let p = bus
        .publish_room(n("new").0, user.clone(), "x".into())
        .await
        .unwrap();
    assert_eq!(p.item.id, 1);
    assert!(bus.rooms.len() < MAX_ROOMS);
    assert!(bus.rooms.contains_key(&kept), "a room with members stays");
    assert!(!bus.rooms.contains_key(&room(0)));
    assert!(bus.rooms.contains_key(&room(MAX_ROOMS - 2)));
    // A forgotten room made again counts in a new epoch: a client's cursor
    // into the old one learns that its history is gone.
    let head = &bus.heads(vec![room(0)]).await.unwrap()[0];
    assert_eq!(head.offset, 0);
    assert_ne!(head.epoch, old_epoch);
    bus.publish_room(room(0), user.clone(), "x".into())
        .await
        .unwrap();
    assert_eq!(bus.heads(vec![room(0)]).await.unwrap()[0].epoch, head.epoch);
    // With every room held by a member, the cap is the answer.
    let bus = LocalBus::new("n1", 3, Duration::ZERO, u64::MAX, MAX_ROOMS);
    for i in 0..MAX_ROOMS {
        bus.room_join(room(i), user.clone()).await.unwrap();
    }
    let e = bus
        .room_join(n("one-more").0, user.clone())
        .await
        .unwrap_err();
    assert!(matches!(e, BusError::TooManyRooms), "{e}");
    // The cap is the node's `app.chat.max_rooms`; a room that exists is
    // joined at the cap all the same.
    let small = LocalBus::new("n1", 3, Duration::ZERO, u64::MAX, 5);
    for i in 0..5 {
        small.room_join(room(i), user.clone()).await.unwrap();
    }
    assert!(small.room_join(room(5), user.clone()).await.is_err());
    small.room_join(room(0), n("other").1).await.unwrap();
}

#[tokio::test]
async fn history_stays_within_its_memory() {
    let bus = LocalBus::new("n1", 100, Duration::ZERO, 20_000, MAX_ROOMS);
    let (_, user) = n("u");
    let text: Arc<str> = "y".repeat(1000).into();
    let member = n("member").0;
    bus.room_join(member.clone(), user.clone()).await.unwrap();
    bus.publish_room(member.clone(), user.clone(), text.clone())
        .await
        .unwrap();
    for i in 0..200 {
        bus.publish_room(room(i % 50), user.clone(), text.clone())
            .await
            .unwrap();
        assert!(bus.history_bytes.load(Ordering::Relaxed) <= 20_000);
    }
    // Idle rooms went first: the room with a member kept its history.
    assert_eq!(bus.history(member.clone(), 0, 10).await.unwrap().len(), 1);
    // A room with members that outgrows what is left keeps its newest.
    for _ in 0..100 {
        bus.publish_room(member.clone(), user.clone(), text.clone())
            .await
            .unwrap();
    }
    assert!(bus.history_bytes.load(Ordering::Relaxed) <= 20_000);
    let h = bus.history(member, 0, 100).await.unwrap();
    assert!(!h.is_empty() && h.len() < 20, "{}", h.len());
    assert_eq!(h.last().map(|m| m.id), Some(101));
    let total: u64 = bus.rooms.iter().map(|e| lock(e.value()).bytes).sum();
    assert_eq!(total, bus.history_bytes.load(Ordering::Relaxed));
}
