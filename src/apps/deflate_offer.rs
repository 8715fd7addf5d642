//! Which permessage-deflate offer (RFC 7692) an app's handshake hands to
//! yawc. A client may list several offers, best first, and the server may
//! accept any one or none. yawc parses a single offer and answers whatever it
//! holds: a window size it cannot use (8, which zlib's raw deflate does not
//! take, or one out of range) comes back as a bare `server_max_window_bits`,
//! which no client accepts in an answer, and a duplicate or unknown parameter
//! is taken, where RFC 7692 §7 asks the server to decline the offer. So the
//! first offer that is valid, and that yawc answers correctly, is kept, and
//! the others go; with none left, compression is not negotiated.

use http::header::SEC_WEBSOCKET_EXTENSIONS;
use http::{HeaderMap, HeaderValue};

/// Leaves in `h` only the first acceptable permessage-deflate offer.
pub fn keep_first_acceptable(h: &mut HeaderMap) {
    let first = h
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(acceptable)
        .and_then(|offer| HeaderValue::from_str(&offer).ok());
    h.remove(SEC_WEBSOCKET_EXTENSIONS);
    if let Some(v) = first {
        h.insert(SEC_WEBSOCKET_EXTENSIONS, v);
    }
}

/// The offer as yawc should see it, if it is a permessage-deflate offer
/// whose parameters are each known, given once and valid (RFC 7692 §7), with
/// a `server_max_window_bits` yawc can honour (9 to 15: 8 is valid, but
/// zlib's raw deflate cannot compress within it, so such an offer is
/// declined). A `client_max_window_bits=8` is left out of what yawc sees: the
/// answer may omit it, and a window of 15 decodes what the client compresses
/// within 8.
fn acceptable(offer: &str) -> Option<String> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        return None;
    }
    let mut kept = String::from("permessage-deflate");
    let mut seen: Vec<String> = Vec::new();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (p.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return None;
        }
        // Written back in canonical form (lower-case name, unquoted value):
        // yawc matches names as written and reads only bare digits.
        let bits = match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => None,
            ("client_max_window_bits", None) => None,
            ("server_max_window_bits" | "client_max_window_bits", Some(v)) => Some(window_bits(v)?),
            _ => return None,
        };
        match bits {
            None => {
                kept.push_str("; ");
                kept.push_str(&name);
            }
            Some(b) if b >= 9 => {
                kept.push_str(&format!("; {name}={b}"));
            }
            Some(_) if name == "server_max_window_bits" => return None,
            Some(_) => {}
        }
        seen.push(name);
    }
    Some(kept)
}

/// The value of a window size, `8` to `15`, plain or quoted.
fn window_bits(v: &str) -> Option<u8> {
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    if v.len() > 2 || v.starts_with('0') {
        return None;
    }
    v.parse::<u8>().ok().filter(|b| (8..=15).contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(offers: &[&str]) -> Option<String> {
        let mut h = HeaderMap::new();
        for o in offers {
            h.append(SEC_WEBSOCKET_EXTENSIONS, o.parse().unwrap());
        }
        keep_first_acceptable(&mut h);
        assert!(h.get_all(SEC_WEBSOCKET_EXTENSIONS).iter().count() <= 1);
        h.get(SEC_WEBSOCKET_EXTENSIONS)
            .map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn the_first_valid_offer_is_kept() {
        assert_eq!(
            kept(&[
                "x-foo, permessage-deflate; client_no_context_takeover; server_max_window_bits=9",
                "permessage-deflate",
            ])
            .as_deref(),
            Some("permessage-deflate; client_no_context_takeover; server_max_window_bits=9")
        );
        assert_eq!(
            kept(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some("permessage-deflate; client_max_window_bits")
        );
        assert_eq!(kept(&["x-foo"]), None);
    }

    #[test]
    fn invalid_offers_are_declined_for_the_next_one() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=99",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=11",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; foo=bar",
        ] {
            assert_eq!(kept(&[bad]), None, "{bad}");
            assert_eq!(
                kept(&[&format!("{bad}, permessage-deflate")]).as_deref(),
                Some("permessage-deflate"),
                "{bad}"
            );
        }
        assert_eq!(
            kept(&[
                "permessage-deflate; Client_Max_Window_Bits=\"12\"; SERVER_NO_CONTEXT_TAKEOVER"
            ])
            .as_deref(),
            Some("permessage-deflate; client_max_window_bits=12; server_no_context_takeover"),
            "canonical, as yawc reads it"
        );
    }

    #[test]
    fn a_client_window_of_8_is_left_out_of_what_yawc_answers() {
        assert_eq!(
            kept(&["permessage-deflate; client_max_window_bits=8; server_no_context_takeover"])
                .as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
    }
}
