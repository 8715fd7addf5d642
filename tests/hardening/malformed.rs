//! Malformed input: bad and smuggling HTTP refused with nothing reaching the
//! upstream, and malformed or random WebSocket frames on echo and chat
//! sessions never breaking the gateway.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{active_reaches, gateway, get_ok, server, status_line, Rng, SERIAL};
use crate::common::raw::{close_code, frame, open_ws, read_to_close, End, Raw, MASK};
use crate::common::*;

#[tokio::test]
async fn malformed_http_is_refused_and_nothing_reaches_the_upstream() {
    let _serial = SERIAL.lock().await;
    let (up, hits) = counting_upstream().await;
    let (gw, _) = gateway(server("max_request_head", "8KiB"), up).await;
    let addr = gw.http();
    let big = "a".repeat(16 * 1024);
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "oversized head",
            format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n").into_bytes(),
            &["HTTP/1.1 431"],
        ),
        (
            "many headers",
            format!("GET / HTTP/1.1\r\nHost: localhost\r\n{}\r\n", "X-A: b\r\n".repeat(400)).into_bytes(),
            &["HTTP/1.1 431"],
        ),
        ("absurd URI length", format!("GET /{big} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes(), &["HTTP/1.1 414", "HTTP/1.1 431"]),
        (
            "CL + TE",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "TE + CL",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "conflicting Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "Content-Length list",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3, 5\r\n\r\nabcde".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "TE not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc".to_vec(),
            &["HTTP/1.1 400"],
        ),
        (
            "TE in HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            &["HTTP/1.1 400", "HTTP/1.0 400"],
        ),
        ("control byte in a value", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x01b\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("NUL in a value", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("space in a name", b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Name: x\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n  b\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("binary request line", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), &["HTTP/1.1 400", ""]),
        ("bad method", b"G(T / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("bad version", b"GET / HTTP/7.3\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400", "HTTP/1.1 505"]),
        ("URI with spaces", b"GET /a b c HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("URI with bytes >= 0x80", b"GET /\xff\xfe HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("bad authority", b"GET http://[::1/ HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("missing Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), &["HTTP/1.1 400"]),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), &["HTTP/1.1 400", "HTTP/1.1 200"]),
        (
            "bad chunk size",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            &["HTTP/1.1 400", "", "HTTP/1.1 502"],
        ),
        (
            "huge chunk size",
            b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n".to_vec(),
            &["HTTP/1.1 400", "", "HTTP/1.1 502"],
        ),
    ];
    let mut forwarded = 0;
    for (name, bytes, want) in &cases {
        let before = hits.load(Ordering::SeqCst);
        let line = status_line(addr, bytes).await;
        assert!(
            want.iter().any(|w| if w.is_empty() {
                line.is_empty()
            } else {
                line.starts_with(w)
            }),
            "{name}: got {line:?}"
        );
        if line.starts_with("HTTP/1.1 200") {
            forwarded += 1;
        } else {
            assert_eq!(
                hits.load(Ordering::SeqCst),
                before,
                "{name}: a refused request reached the upstream"
            );
        }
        // The process keeps serving after each one.
        assert!(get_ok(addr).await, "{name}: still serving");
    }
    // Only the one accepted shape (and the health probes) reached the upstream.
    assert!(forwarded <= 1);
    assert_eq!(hits.load(Ordering::SeqCst), cases.len() + forwarded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_websocket_frames_never_break_the_gateway() {
    let _serial = SERIAL.lock().await;
    let (up, _) = counting_upstream().await;
    let (gw, _) = gateway(Cfg::new(), up).await;
    let addr = gw.http();

    // A header claiming 2^62 bytes on a chat session: 1009 from the header alone.
    for path in ["/chat/ws?user=big", "/echo"] {
        let mut s = open_ws(addr, path).await;
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        s.write_all(&huge).await.unwrap();
        let Raw { bytes: out, end } = read_to_close(&mut s, Duration::from_secs(5)).await;
        let closed = end == End::Closed;
        assert!(closed, "{path}: closed");
        assert_eq!(close_code(&out), Some(1009), "{path}");
    }
    // The most significant length bit set (RFC 6455 forbids it): closed, no hang.
    let mut s = open_ws(addr, "/echo").await;
    let mut bad = vec![0x82, 0x80 | 127];
    bad.extend_from_slice(&u64::MAX.to_be_bytes());
    bad.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&bad).await.unwrap();
    let Raw { bytes: out, end } = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = end == End::Closed;
    assert!(closed);
    assert!(
        matches!(close_code(&out), Some(1002) | Some(1009)),
        "{:?}",
        close_code(&out)
    );
    // Chat: malformed JSON and unknown types are answered with error frames, the
    // session stays usable; a close with a bad code is a protocol error.
    let mut s = open_ws(addr, "/chat/ws?user=fuzzy").await;
    for junk in [
        &b"{"[..],
        b"[]",
        b"{\"type\":1}",
        b"{\"type\":\"nope\"}",
        b"null",
        &[0xff; 10],
    ] {
        let op = if std::str::from_utf8(junk).is_ok() {
            1
        } else {
            2
        };
        s.write_all(&frame(true, op, junk, MASK)).await.unwrap();
    }
    s.write_all(&frame(true, 8, &[0x03, 0xe7], MASK))
        .await
        .unwrap(); // 999: invalid
    let Raw { bytes: out, end } = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = end == End::Closed;
    assert!(closed);
    assert!(
        String::from_utf8_lossy(&out).contains("error"),
        "error frames were sent"
    );

    // Random frames and random bytes on echo and chat sessions: every session
    // ends (the client half-closes after its garbage) and nothing panics.
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for i in 0..120 {
        let path = if i % 2 == 0 {
            "/echo".to_string()
        } else {
            format!("/chat/ws?user=r{i}")
        };
        let mut s = open_ws(addr, &path).await;
        let mut junk = Vec::new();
        for _ in 0..(1 + rng.next() % 4) {
            match rng.next() % 4 {
                0 => junk.extend(rng.some_bytes(0, 64)),
                1 => {
                    let op = [0u8, 1, 2, 3, 8, 9, 10, 11, 15][(rng.next() % 9) as usize];
                    let payload = rng.some_bytes(0, 200);
                    let mut f = frame(rng.next() % 2 == 0, op, &payload, MASK);
                    f[0] |= (rng.next() as u8) & 0x70; // reserved bits
                    junk.extend(f);
                }
                2 => {
                    // A frame header with a random 64-bit length and a short body.
                    junk.extend([0x82, 0x80 | 127]);
                    junk.extend(rng.next().to_be_bytes());
                    junk.extend(rng.bytes(8));
                }
                _ => junk.extend(frame(true, 1, b"{\"type\":\"join\",\"room\":\"r\"}", MASK)),
            }
        }
        s.write_all(&junk).await.unwrap();
        let _ = s.shutdown().await;
        let closed = read_to_close(&mut s, Duration::from_secs(10))
            .await
            .closed();
        assert!(closed, "iteration {i}: the session ended");
    }
    assert!(
        active_reaches(&gw, 0).await,
        "every session released its slot"
    );
    // Still serving: a clean echo session works.
    let mut s = open_ws(addr, "/echo").await;
    s.write_all(&frame(true, 1, b"still here", MASK))
        .await
        .unwrap();
    let mut h = [0u8; 12];
    tokio::time::timeout(WAIT, s.read_exact(&mut h))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&h[2..], b"still here");
}
