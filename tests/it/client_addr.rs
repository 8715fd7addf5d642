//! The real client address over real sockets (docs/client-address.md):
//! PROXY protocol v1 and v2 on plain and TLS listeners, from trusted and
//! untrusted peers; malformed and late headers closed; X-Forwarded-For
//! chains resolved from trusted proxies and replaced from anyone else; and
//! the resolved address used by per-IP caps and `sticky = "ip"`.
//!
//! `trusted_proxies = ["127.0.0.1/32"]`; connections from 127.0.0.2 are the
//! untrusted ones. Every wait has a deadline: a hung gateway fails a test.

use crate::common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;

use bytes::Bytes;
use common::raw::read_to_close;
use common::*;
use http::Response;
use http_body_util::Full;
use tokio::io::AsyncWriteExt;

const TRUSTED: &str = "127.0.0.1";
const UNTRUSTED: &str = "127.0.0.2";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// An upstream that answers with what it was told about the client.
async fn mirror() -> SocketAddr {
    http_upstream(|req| async move {
        let h = req.headers();
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let body = format!(
            "xff=[{}] fwd=[{}] real=[{}] proto=[{}]",
            all("x-forwarded-for"),
            all("forwarded"),
            all("x-real-ip"),
            all("x-forwarded-proto"),
        );
        Response::new(Full::new(Bytes::from(body)))
    })
    .await
}

/// A gateway in front of `up` on `/api/`, trusting 127.0.0.1, with `listener`.
fn config(up: SocketAddr, listener: Listener) -> Cfg {
    Cfg::new()
        .set("server.trusted_proxies", vec![format!("{TRUSTED}/32")])
        .listener(listener)
        .upstream("api", &[up])
        .route_upstream("/api/", "api")
}

fn v2(cmd: u8, fam: u8, addrs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(cmd);
    h.push(fam);
    h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    h.extend_from_slice(addrs);
    h
}

/// A v2 PROXY header for a TCP/IPv4 client `src:port`.
fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&[10, 0, 0, 1]);
    a.extend_from_slice(&port.to_be_bytes());
    a.extend_from_slice(&443u16.to_be_bytes());
    v2(0x21, 0x11, &a)
}

/// A v2 PROXY header for a TCP/IPv6 client, with a TLV after the addresses.
fn v2_tcp6(src: Ipv6Addr, port: u16) -> Vec<u8> {
    let mut a = src.octets().to_vec();
    a.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
    a.extend_from_slice(&port.to_be_bytes());
    a.extend_from_slice(&443u16.to_be_bytes());
    a.extend_from_slice(&[0x04, 0x00, 0x03, b'x', b'y', b'z']); // PP2_TYPE_NOOP
    v2(0x21, 0x21, &a)
}

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 10.0.0.1 5555 443\r\n").into_bytes()
}

fn request(extra: &str) -> Vec<u8> {
    format!("GET /api/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n")
        .into_bytes()
}

/// From `src`: writes each of `writes` in turn, then reads to close.
async fn exchange(addr: SocketAddr, src: &str, writes: &[&[u8]]) -> Raw {
    let mut s = connect_from(ip(src), addr).await;
    for w in writes {
        // The gateway may close before taking everything: an answer too.
        if s.write_all(w).await.is_err() {
            break;
        }
    }
    read_to_close(&mut s, WAIT).await
}

/// What the mirror said, from a raw answer that must be a 200.
fn mirrored(r: &Raw) -> String {
    let t = r.answer();
    assert!(t.starts_with("HTTP/1.1 200"), "{t}");
    t.rsplit("\r\n\r\n").next().unwrap_or("").to_string()
}

/// Closed with not a byte answered, and not by our deadline.
fn closed_silently(r: &Raw, what: &str) {
    assert!(r.closed(), "{what}: still open after {WAIT:?} (hung?)");
    assert!(r.bytes.is_empty(), "{what}: answered {:?}", r.text());
}

#[tokio::test]
async fn proxy_v1_and_v2_name_the_client_on_a_plain_listener() {
    let up = mirror().await;
    let listener = Listener::plain().set("proxy_protocol", true);
    let gw = TestGateway::start(&config(up, listener).build()).await;
    let addr = gw.http();

    // v1, header and request in one write: the bytes after the header are kept.
    let one = [v1("203.0.113.7"), request("")].concat();
    let r = exchange(addr, TRUSTED, &[&one]).await;
    assert!(mirrored(&r).contains("xff=[203.0.113.7]"), "{}", r.text());

    // v2, the header split over two writes and the request after it; the
    // named client is no trusted proxy, so its own X-Forwarded-For goes.
    let h = v2_tcp4([198, 51, 100, 4], 4000);
    let spoof = request("X-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\n");
    let r = exchange(addr, TRUSTED, &[&h[..7], &h[7..], &spoof]).await;
    let m = mirrored(&r);
    assert!(m.contains("xff=[198.51.100.4] fwd=[] real=[]"), "{m}");

    // v2 over IPv6 with a TLV.
    let h = v2_tcp6("2001:db8::7".parse().unwrap(), 1);
    let r = exchange(addr, TRUSTED, &[&h, &request("")]).await;
    assert!(mirrored(&r).contains("xff=[2001:db8::7]"), "{}", r.text());

    // PROXY UNKNOWN and v2 LOCAL (a balancer's health check): the peer stays.
    let r = exchange(addr, TRUSTED, &[b"PROXY UNKNOWN\r\n", &request("")]).await;
    assert!(mirrored(&r).contains("xff=[127.0.0.1]"), "{}", r.text());
    let r = exchange(addr, TRUSTED, &[&v2(0x20, 0x00, &[]), &request("")]).await;
    assert!(mirrored(&r).contains("xff=[127.0.0.1]"), "{}", r.text());
}

#[tokio::test]
async fn proxy_headers_precede_tls() {
    let up = mirror().await;
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "gw", &["localhost"]);
    let listener = Listener::plain()
        .tls("{dir}/gw.crt", "{dir}/gw.key")
        .set("proxy_protocol", true);
    let ca = dir.path().join("gw.crt").to_string_lossy().into_owned();
    let gw = TestGateway::start_in(&config(up, listener).build(), dir).await;
    let addr = gw.https();
    let client = tls_client(&ca, &[b"http/1.1"]);
    for (header, want) in [
        (v1("203.0.113.9"), "203.0.113.9"),
        (v2_tcp4([192, 0, 2, 33], 7), "192.0.2.33"),
    ] {
        let mut tcp = connect_from(ip(TRUSTED), addr).await;
        tcp.write_all(&header).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio::time::timeout(
            WAIT,
            tokio_rustls::TlsConnector::from(client.clone()).connect(name, tcp),
        )
        .await
        .expect("handshake in time")
        .expect("TLS after the PROXY header");
        let r = tokio::time::timeout(WAIT, send_on(tls, common::request("GET", "/api/", &[], "")))
            .await
            .expect("answer in time");
        let body = r.text();
        assert!(body.contains(&format!("xff=[{want}]")), "{body}");
        assert!(body.contains("proto=[https]"), "{body}");
    }

    // TLS without the header, from the trusted peer: closed, not served.
    let mut tcp = connect_from(ip(TRUSTED), addr).await;
    tcp.write_all(&common::tls::tls11_client_hello())
        .await
        .unwrap();
    closed_silently(&read_to_close(&mut tcp, WAIT).await, "TLS without PROXY");
    // A valid header from an untrusted peer: closed before TLS.
    let mut tcp = connect_from(ip(UNTRUSTED), addr).await;
    let _ = tcp.write_all(&v1("203.0.113.9")).await;
    closed_silently(&read_to_close(&mut tcp, WAIT).await, "untrusted over TLS");
}

#[tokio::test]
async fn untrusted_malformed_and_late_headers_are_closed() {
    let up = mirror().await;
    let listener = Listener::plain().set("proxy_protocol", true);
    let toml = config(up, listener)
        .set("server.header_timeout", "1s")
        .admin()
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();

    let valid = [v1("203.0.113.7"), request("")].concat();
    closed_silently(
        &exchange(addr, UNTRUSTED, &[&valid]).await,
        "a valid header from an untrusted peer",
    );
    let long_line = [b"PROXY TCP4 ".as_slice(), &[b'1'; 150]].concat();
    let mut big_v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    big_v2.extend_from_slice(&u16::MAX.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no header at all", request("")),
        (
            "v1 without the space",
            b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "v1 bad family",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
        ),
        (
            "v1 bad address",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n".to_vec(),
        ),
        ("v1 bare LF", b"PROXY UNKNOWN\n".to_vec()),
        ("v1 over 107 bytes", long_line),
        (
            "v2 bad version",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x00".to_vec(),
        ),
        ("v2 over the size cap", big_v2),
        (
            "v2 UDP",
            v2(0x21, 0x12, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]),
        ),
        ("v2 too short for its family", v2(0x21, 0x11, &[1, 2, 3])),
    ];
    for (what, bytes) in cases {
        // The request after the header must not be answered either.
        let r = exchange(addr, TRUSTED, &[&bytes, &request("")]).await;
        closed_silently(&r, what);
    }
    // Silence, and half a header then silence: closed at header_timeout.
    closed_silently(&exchange(addr, TRUSTED, &[]).await, "silence");
    closed_silently(
        &exchange(addr, TRUSTED, &[b"PROXY TCP4 203.0.1"]).await,
        "half a header",
    );
    // The listener still serves.
    let r = exchange(addr, TRUSTED, &[&valid]).await;
    assert!(mirrored(&r).contains("xff=[203.0.113.7]"));
    // Every refusal is counted by its reason (and warned of, at most every 10 s).
    let metrics = get(gw.admin(), "/metrics").await.text();
    let count = |reason: &str| -> u64 {
        let line = format!("wsgate_proxy_header_refused_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("untrusted"), 1, "{metrics}");
    assert!(
        count("malformed") >= 8 && count("timeout") >= 2,
        "{metrics}"
    );
    assert_eq!(count("malformed") + count("timeout"), 12, "{metrics}");
}

#[tokio::test]
async fn forwarded_for_chains_from_trusted_and_untrusted_peers() {
    let up = mirror().await;
    let toml = config(up, Listener::plain())
        .set(
            "server.trusted_proxies",
            vec!["127.0.0.1/32".to_string(), "10.0.0.0/8".to_string()],
        )
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();
    let chain = "X-Forwarded-For: 1.1.1.1, 198.51.100.9\r\nX-Forwarded-For: 10.1.1.1\r\n\
                 Forwarded: for=198.51.100.9\r\nX-Real-IP: 198.51.100.9\r\n\
                 X-Forwarded-Proto: https\r\n";

    // From a trusted proxy: the chain (both lines) is kept and the proxy appended.
    let m = mirrored(&exchange(addr, TRUSTED, &[&request(chain)]).await);
    assert!(
        m.contains("xff=[1.1.1.1, 198.51.100.9, 10.1.1.1, 127.0.0.1]"),
        "{m}"
    );
    assert!(m.contains("fwd=[for=198.51.100.9, for=127.0.0.1]"), "{m}");
    assert!(m.contains("real=[198.51.100.9]"), "{m}");
    assert!(
        m.contains("proto=[https]"),
        "the proxy's scheme is kept: {m}"
    );

    // From anyone else: none of it is believed or passed on.
    let m = mirrored(&exchange(addr, UNTRUSTED, &[&request(chain)]).await);
    assert_eq!(m, "xff=[127.0.0.2] fwd=[] real=[] proto=[http]");
}

#[tokio::test]
async fn per_ip_caps_count_the_proxy_named_client() {
    let up = mirror().await;
    let listener = Listener::plain().set("proxy_protocol", true);
    let toml = config(up, listener)
        .set("server.max_connections_per_ip", 1)
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();

    // One connection for 203.0.113.7, held open after a served request.
    let mut held = connect_from(ip(TRUSTED), addr).await;
    let keep = b"GET /api/ HTTP/1.1\r\nHost: localhost\r\n\r\n";
    held.write_all(&[v1("203.0.113.7").as_slice(), keep].concat())
        .await
        .unwrap();
    let head = tokio::time::timeout(WAIT, common::raw::read_head(&mut held))
        .await
        .expect("answer in time");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // A second one for the same client, through the same balancer: 429.
    let over = [v1("203.0.113.7"), request("")].concat();
    let r = exchange(addr, TRUSTED, &[&over]).await;
    assert!(r.answer().starts_with("HTTP/1.1 429"), "{}", r.text());
    // Another client through the same balancer is admitted.
    let other = [v1("203.0.113.8"), request("")].concat();
    let r = exchange(addr, TRUSTED, &[&other]).await;
    assert!(mirrored(&r).contains("xff=[203.0.113.8]"));
}

#[tokio::test]
async fn sticky_ip_follows_the_resolved_client() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let toml = Cfg::new()
        .set("server.trusted_proxies", vec![format!("{TRUSTED}/32")])
        .listener_plain()
        .upstream("api", &[a, b])
        .set("upstream.api.sticky", "ip")
        .route_upstream("/api/", "api")
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();
    let server_for = |src: &'static str, client: String| async move {
        let r = exchange(
            addr,
            src,
            &[&request(&format!("X-Forwarded-For: {client}\r\n"))],
        )
        .await;
        let t = r.answer();
        assert!(t.starts_with("HTTP/1.1 200"), "{t}");
        t.rsplit("\r\n\r\n").next().unwrap_or("").to_string()
    };

    // Through the trusted proxy, each client keeps its server and the
    // clients spread over both: the key is the client, not the proxy.
    let mut seen = HashSet::new();
    for i in 1..=24u8 {
        let client = format!("198.51.100.{i}");
        let first = server_for(TRUSTED, client.clone()).await;
        assert_eq!(first, server_for(TRUSTED, client).await, "client {i} moved");
        seen.insert(first);
    }
    assert_eq!(
        seen.len(),
        2,
        "every client went to {seen:?}: keyed on the proxy?"
    );

    // From an untrusted peer the header is ignored: one key, one server.
    let mut seen = HashSet::new();
    for i in 1..=12u8 {
        seen.insert(server_for(UNTRUSTED, format!("198.51.100.{i}")).await);
    }
    assert_eq!(
        seen.len(),
        1,
        "a spoofed X-Forwarded-For moved the client: {seen:?}"
    );
}

#[test]
fn proxy_protocol_without_trusted_proxies_is_a_config_error() {
    let text = "[[listener]]\naddr = \"127.0.0.1:0\"\nproxy_protocol = true\n";
    let e = wsgate::config::parse(Path::new("PATH"), text)
        .expect_err("no trusted proxy")
        .to_string();
    assert!(e.contains("PATH:3:18: listener[0].proxy_protocol"), "{e}");
    let text = "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\", \"nope\"]\n\
                [[listener]]\naddr = \"127.0.0.1:0\"\n";
    let e = wsgate::config::parse(Path::new("PATH"), text)
        .expect_err("bad blocks")
        .to_string();
    assert!(
        e.contains("PATH:2:34: server.trusted_proxies[1]: 10.0.0.1/8 has host bits set: the block is 10.0.0.0/8"),
        "{e}"
    );
    assert!(e.contains("PATH:2:48: server.trusted_proxies[2]"), "{e}");
}

/// Fields a handshake's `Connection` names are not forwarded, and the
/// tunnel decides what it adds on the fields that do go on, as the HTTP
/// proxy does (probe 12): a named `Host` is written by the gateway (the
/// upstream must get one), and a trusted hop's named `X-Forwarded-For`
/// chain is not carried on in one path and dropped in the other.
#[tokio::test]
async fn a_handshake_naming_fields_in_connection_is_forwarded_as_a_request_is() {
    use tokio_tungstenite::tungstenite::handshake::server::{Request as WsReq, Response as WsResp};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let ws_up = listener.local_addr().expect("addr");
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = seen_tx.clone();
            tokio::spawn(async move {
                let cb = |req: &WsReq, resp: WsResp| {
                    let all = |n: &str| {
                        req.headers()
                            .get_all(n)
                            .iter()
                            .map(|v| v.to_str().unwrap_or("?").to_string())
                            .collect::<Vec<_>>()
                            .join(" | ")
                    };
                    let _ = tx.send((all("host"), all("x-forwarded-for")));
                    Ok(resp)
                };
                let _ = tokio_tungstenite::accept_hdr_async(s, cb).await;
            });
        }
    });
    let up = mirror().await;
    let toml = config(up, Listener::plain())
        .upstream("wsup", &[ws_up])
        .route_upstream("/ws", "wsup")
        .build();
    let gw = TestGateway::start(&toml).await;
    let addr = gw.http();
    let hs = |connection: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             X-Forwarded-For: 198.51.100.7\r\n\r\n"
        )
        .into_bytes()
    };
    let _ = exchange(addr, TRUSTED, &[&hs("Upgrade, Host")]).await;
    let (host, xff) = within(seen.recv()).await.expect("seen");
    assert!(!host.is_empty(), "the upstream handshake had no Host");
    assert_eq!(xff, "198.51.100.7, 127.0.0.1");
    // The chain named in Connection is not passed on, here or over HTTP.
    let _ = exchange(addr, TRUSTED, &[&hs("Upgrade, X-Forwarded-For")]).await;
    let (_, xff) = within(seen.recv()).await.expect("seen");
    let named = "Connection: keep-alive, X-Forwarded-For\r\nX-Forwarded-For: 198.51.100.7\r\n";
    let m = mirrored(&exchange(addr, TRUSTED, &[&request(named)]).await);
    assert!(
        m.contains(&format!("xff=[{xff}]")),
        "tunnel {xff}, proxy {m}"
    );
    assert_eq!(xff, "127.0.0.1");
}

/// Fails the test instead of hanging when the upstream never sees anything.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("in time")
}
