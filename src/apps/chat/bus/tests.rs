//! Unit tests of the single-node bus: ids, the history ring, presence, and
//! rooms dropped once empty.

use std::time::Duration;

use super::*;

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
    let bus = LocalBus::new("n1", 3, Duration::ZERO);
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
    let bus = LocalBus::new("n1", 3, Duration::ZERO);
    let (room, user) = n("b");
    bus.room_join(room.clone(), user.clone()).await.unwrap();
    assert_eq!(bus.rooms.len(), 1);
    bus.room_leave(room, user).await.unwrap();
    assert_eq!(bus.rooms.len(), 0);
}
