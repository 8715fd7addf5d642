//! The inspected splice's own state encodings.

use super::*;

#[test]
fn end_codes_round_trip() {
    for e in [
        SpliceEnd::Closed,
        SpliceEnd::Idle,
        SpliceEnd::Drain,
        SpliceEnd::Error,
        SpliceEnd::TooBig,
        SpliceEnd::PeerDead,
        SpliceEnd::Protocol,
        SpliceEnd::Policy,
        SpliceEnd::Expired,
    ] {
        assert_eq!(end_from(end_code(e)), e);
    }
}
