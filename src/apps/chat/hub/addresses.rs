//! Rooms held per client address (`app.chat.max_rooms_per_ip`). A node keeps
//! at most `max_rooms` rooms and never forgets one with members, so without
//! this one address opening many connections could hold every room and stop
//! anyone else making one. Distinct rooms are counted, not memberships: many
//! users behind one NAT mostly share their rooms.

use std::collections::HashMap;
use std::net::IpAddr;

use dashmap::DashMap;

use crate::apps::chat::protocol::{ChatError, RoomName};

pub(super) struct AddressRooms {
    /// 0: no cap (nothing is counted).
    cap: usize,
    /// Per address, its connections' memberships per room.
    held: DashMap<IpAddr, HashMap<RoomName, u32>>,
}

impl AddressRooms {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            held: DashMap::new(),
        }
    }

    /// Counts one more membership of `room` from `ip`; refused when that
    /// would be a room past the address's cap.
    pub(super) fn enter(&self, ip: IpAddr, room: &RoomName) -> Result<(), ChatError> {
        if self.cap == 0 {
            return Ok(());
        }
        let refused = {
            let mut rooms = self.held.entry(ip).or_default();
            if let Some(n) = rooms.get_mut(room) {
                *n += 1;
                return Ok(());
            }
            let full = rooms.len() >= self.cap;
            if !full {
                rooms.insert(room.clone(), 1);
            }
            full
        };
        if refused {
            return Err(ChatError::RoomsPerAddress(self.cap));
        }
        Ok(())
    }

    /// Whether `ip` may hold `rooms` besides what it holds: asked before a
    /// stream or poll session that joins them all does anything in the
    /// shared store, so a refused one leaves no trace there. (`enter` still
    /// decides, one room at a time.)
    pub(super) fn check(&self, ip: IpAddr, rooms: &[RoomName]) -> Result<(), ChatError> {
        if self.cap == 0 {
            return Ok(());
        }
        let held = self.held.get(&ip);
        let mut new: Vec<&RoomName> = rooms
            .iter()
            .filter(|r| !held.as_ref().is_some_and(|h| h.contains_key(*r)))
            .collect();
        new.sort_unstable();
        new.dedup();
        let holds = held.as_ref().map_or(0, |h| h.len());
        if holds + new.len() > self.cap {
            return Err(ChatError::RoomsPerAddress(self.cap));
        }
        Ok(())
    }

    /// Gives back a membership [`enter`](Self::enter) counted.
    pub(super) fn exit(&self, ip: IpAddr, room: &RoomName) {
        if self.cap == 0 {
            return;
        }
        if let Some(mut rooms) = self.held.get_mut(&ip) {
            if let Some(n) = rooms.get_mut(room) {
                *n -= 1;
                if *n == 0 {
                    rooms.remove(room);
                }
            }
        }
        self.held.remove_if(&ip, |_, rooms| rooms.is_empty());
    }

    /// Distinct rooms `ip` holds now.
    #[cfg(test)]
    pub(super) fn rooms_of(&self, ip: IpAddr) -> usize {
        self.held.get(&ip).map_or(0, |r| r.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).expect("room name")
    }

    #[test]
    fn an_address_holds_at_most_cap_distinct_rooms() {
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let rooms = AddressRooms::new(2);
        rooms.enter(a, &room("r1")).unwrap();
        rooms.enter(a, &room("r2")).unwrap();
        // A room the address already holds costs nothing more.
        rooms.enter(a, &room("r1")).unwrap();
        let e = rooms.enter(a, &room("r3")).unwrap_err();
        assert!(matches!(e, ChatError::RoomsPerAddress(2)), "{e}");
        // Other addresses are not affected.
        rooms.enter(b, &room("r3")).unwrap();
        // r1 is held twice: one exit keeps it.
        rooms.exit(a, &room("r1"));
        assert!(rooms.enter(a, &room("r3")).is_err());
        rooms.exit(a, &room("r1"));
        rooms.enter(a, &room("r3")).unwrap();
        assert_eq!(rooms.rooms_of(a), 2);
        for r in ["r2", "r3"] {
            rooms.exit(a, &room(r));
        }
        assert_eq!(rooms.rooms_of(a), 0);
        assert!(
            rooms.held.get(&a).is_none(),
            "an address with no rooms is forgotten"
        );
    }

    #[test]
    fn zero_is_no_cap() {
        let rooms = AddressRooms::new(0);
        let a: IpAddr = [192, 0, 2, 1].into();
        for i in 0..50 {
            rooms.enter(a, &room(&format!("r{i}"))).unwrap();
        }
        assert_eq!(rooms.rooms_of(a), 0);
    }
}
