use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method};

use super::*;

const T: u64 = 1_700_000_000;

fn file() -> Validators {
    Validators {
        etag: "\"a-1\"".into(),
        modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(T)),
    }
}

fn at(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn ask(method: Method, pairs: &[(&'static str, &str)]) -> Outcome {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(T + 100);
    evaluate(&method, &h, &file(), 1000, now)
}

fn get(pairs: &[(&'static str, &str)]) -> Outcome {
    ask(Method::GET, pairs)
}

fn part(start: u64, end: u64) -> Outcome {
    Outcome::Partial { start, end }
}

#[test]
fn ranges_of_every_form() {
    assert_eq!(get(&[("range", "bytes=0-99")]), part(0, 99));
    assert_eq!(get(&[("range", "bytes=900-")]), part(900, 999));
    assert_eq!(get(&[("range", "bytes=-100")]), part(900, 999));
    assert_eq!(get(&[("range", "bytes=-5000")]), part(0, 999));
    assert_eq!(get(&[("range", "bytes=990-5000")]), part(990, 999));
    assert_eq!(get(&[("range", "Bytes = 1-1")]), part(1, 1));
    assert_eq!(get(&[("range", "bytes=1000-")]), Outcome::Unsatisfiable);
    assert_eq!(get(&[("range", "bytes=-0")]), Outcome::Unsatisfiable);
    // Ignored: the whole file.
    for whole in [
        "bytes=5-1",
        "bytes=a-b",
        "bytes=+1-2",
        "bytes=0-1,5-6",
        "items=0-1",
        "bytes=",
        "bytes=1",
    ] {
        assert_eq!(get(&[("range", whole)]), Outcome::Full, "{whole}");
    }
    assert_eq!(
        get(&[("range", "bytes=0-1"), ("range", "bytes=2-3")]),
        Outcome::Full
    );
    assert_eq!(ask(Method::HEAD, &[("range", "bytes=0-1")]), Outcome::Full);
    let empty = evaluate(
        &Method::GET,
        &[(http::header::RANGE, HeaderValue::from_static("bytes=-1"))]
            .into_iter()
            .collect(),
        &file(),
        0,
        SystemTime::now(),
    );
    assert_eq!(empty, Outcome::Unsatisfiable);
}

#[test]
fn if_range_serves_the_range_only_for_the_same_file() {
    let r = ("range", "bytes=0-9");
    assert_eq!(get(&[r, ("if-range", "\"a-1\"")]), part(0, 9));
    assert_eq!(get(&[r, ("if-range", &at(T))]), part(0, 9));
    assert_eq!(get(&[r, ("if-range", "\"b-2\"")]), Outcome::Full);
    assert_eq!(get(&[r, ("if-range", "W/\"a-1\"")]), Outcome::Full, "weak");
    assert_eq!(get(&[r, ("if-range", &at(T + 1))]), Outcome::Full);
    assert_eq!(get(&[r, ("if-range", "garbage")]), Outcome::Full);
    // A date within the current second may be shared by two writes: weak.
    let mut h = HeaderMap::new();
    h.insert("range", HeaderValue::from_static("bytes=0-9"));
    h.insert("if-range", HeaderValue::from_str(&at(T)).unwrap());
    let just_now = SystemTime::UNIX_EPOCH + Duration::from_secs(T);
    assert_eq!(
        evaluate(&Method::GET, &h, &file(), 1000, just_now),
        Outcome::Full
    );
}

#[test]
fn preconditions_in_the_rfc_order() {
    assert_eq!(get(&[("if-match", "\"a-1\"")]), Outcome::Full);
    assert_eq!(get(&[("if-match", "\"x\", \"a-1\"")]), Outcome::Full);
    assert_eq!(get(&[("if-match", "*")]), Outcome::Full);
    assert_eq!(get(&[("if-match", "\"x\"")]), Outcome::PreconditionFailed);
    assert_eq!(
        get(&[("if-match", "W/\"a-1\"")]),
        Outcome::PreconditionFailed,
        "If-Match compares strongly"
    );
    assert_eq!(
        get(&[("if-unmodified-since", &at(T - 1))]),
        Outcome::PreconditionFailed
    );
    assert_eq!(get(&[("if-unmodified-since", &at(T))]), Outcome::Full);
    // If-Match decides when both are there.
    assert_eq!(
        get(&[("if-match", "\"a-1\""), ("if-unmodified-since", &at(T - 1))]),
        Outcome::Full
    );
    assert_eq!(get(&[("if-none-match", "W/\"a-1\"")]), Outcome::NotModified);
    assert_eq!(get(&[("if-none-match", "\"x\"")]), Outcome::Full);
    assert_eq!(get(&[("if-modified-since", &at(T))]), Outcome::NotModified);
    assert_eq!(get(&[("if-modified-since", &at(T - 1))]), Outcome::Full);
    assert_eq!(
        get(&[("if-modified-since", &at(T + 1000))]),
        Outcome::Full,
        "a date in the future is not valid"
    );
    // If-None-Match decides when both are there.
    assert_eq!(
        get(&[("if-none-match", "\"x\""), ("if-modified-since", &at(T))]),
        Outcome::Full
    );
    // A failed If-Match wins over a range; a 304 too.
    let r = ("range", "bytes=0-9");
    assert_eq!(
        get(&[r, ("if-match", "\"x\"")]),
        Outcome::PreconditionFailed
    );
    assert_eq!(
        get(&[r, ("if-none-match", "\"a-1\"")]),
        Outcome::NotModified
    );
}
