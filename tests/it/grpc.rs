//! gRPC through the gateway to an HTTP/2-over-TLS upstream (issue 21, item
//! 5), with a real gRPC client and server (tonic, `common::grpc`): unary,
//! server streaming, client streaming and bidi calls; status and message in
//! trailers; the client's deadline (`grpc-timeout`) reaching the server.
//! The client speaks HTTP/2 with prior knowledge to the plain listener.

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::grpc::{grpc_upstream, RawCodec};
use common::tls_upstream::TestCa;
use common::{Cfg, Route, TestGateway, WAIT};
use futures_util::StreamExt;
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::transport::Channel;
use tonic::{Code, Request};

async fn client(gw: &TestGateway) -> Grpc<Channel> {
    let channel = Channel::from_shared(format!("http://{}", gw.http()))
        .expect("uri")
        .connect()
        .await
        .expect("channel");
    let mut g = Grpc::new(channel);
    g.ready().await.expect("ready");
    g
}

fn path(method: &str) -> PathAndQuery {
    PathAndQuery::try_from(format!("/t.Echo/{method}")).expect("path")
}

#[tokio::test]
async fn grpc_calls_of_every_kind_pass_through() {
    let ca = TestCa::new("grpc");
    let up = grpc_upstream(&ca).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = ca.write(dir.path(), "ca");
    let cfg = Cfg::new()
        .listener_plain()
        .route(Route::upstream("/", "grpc"))
        .upstream("grpc", &[format!("https://localhost:{}", up.port())])
        .set("upstream.grpc.tls_ca", ca_path)
        .set("upstream.grpc.protocol", "h2")
        .build();
    let gw = TestGateway::start_in(&cfg, dir).await;
    let calls = async {
        let mut g = client(&gw).await;

        // Unary, with a deadline the server sees.
        let mut req = Request::new(Bytes::from_static(b"ping"));
        req.set_timeout(Duration::from_secs(5));
        let resp = g.unary(req, path("Unary"), RawCodec).await.expect("unary");
        let timeout = resp.metadata().get("x-timeout").cloned();
        assert_eq!(resp.into_inner(), "ping");
        assert!(
            timeout.is_some_and(|t| t
                .to_str()
                .is_ok_and(|t| t.ends_with('u') || t.ends_with('m'))),
            "grpc-timeout reached the server"
        );

        // A status in trailers-only answer.
        g.ready().await.expect("ready");
        let req = Request::new(Bytes::from_static(b"x"));
        let st = g
            .unary(req, path("Fail"), RawCodec)
            .await
            .expect_err("fails");
        assert_eq!(st.code(), Code::NotFound);
        assert_eq!(st.message(), "nope");

        // Server streaming.
        g.ready().await.expect("ready");
        let req = Request::new(Bytes::from_static(b"s"));
        let mut stream = g
            .server_streaming(req, path("ServerStream"), RawCodec)
            .await
            .expect("server streaming")
            .into_inner();
        let mut got = Vec::new();
        while let Some(m) = stream.next().await {
            got.push(m.expect("message"));
        }
        assert_eq!(got, ["s/0", "s/1", "s/2"]);

        // Client streaming.
        g.ready().await.expect("ready");
        let msgs =
            futures_util::stream::iter(["a", "b", "c"].map(|s| Bytes::from_static(s.as_bytes())));
        let resp = g
            .client_streaming(Request::new(msgs), path("ClientStream"), RawCodec)
            .await
            .expect("client streaming");
        assert_eq!(resp.into_inner(), "a+b+c");

        // Bidi, one message at a time: each echo arrives before the next is sent.
        g.ready().await.expect("ready");
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let out = tokio_stream_of(rx);
        let mut echoes = g
            .streaming(Request::new(out), path("Bidi"), RawCodec)
            .await
            .expect("bidi")
            .into_inner();
        for m in ["one", "two", "three"] {
            tx.send(Bytes::from_static(m.as_bytes()))
                .await
                .expect("send");
            let e = echoes.next().await.expect("an echo").expect("message");
            assert_eq!(e, m);
        }
        drop(tx);
        assert!(echoes.next().await.is_none(), "the call ends with OK");
    };
    tokio::time::timeout(WAIT, calls)
        .await
        .expect("calls finish in time");
}

/// The gateway's own refusals reach a gRPC client as gRPC statuses carrying
/// the reason (trailers-only answers, as Envoy gives), not as bare HTTP
/// statuses the client has to guess a code from.
#[tokio::test]
async fn the_gateways_own_refusals_are_grpc_statuses() {
    use base64::Engine;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let cfg = Cfg::new()
        .listener_plain()
        .set("auth.users.hmac_secret", format!("base64:{secret}"))
        .route(Route::upstream("/t.Down/", "down"))
        .route(Route::upstream("/t.Secure/", "down").set("auth", "users"))
        .upstream("down", &[closed])
        .build();
    let gw = TestGateway::start(&cfg).await;
    let calls = async {
        let mut g = client(&gw).await;
        let cases = [
            (
                "/t.Down/Unary",
                Code::Unavailable,
                "upstream server unavailable",
            ),
            (
                "/t.Secure/Unary",
                Code::Unauthenticated,
                "authentication required",
            ),
            (
                "/t.Elsewhere/Unary",
                Code::Unimplemented,
                "no route matches this host and path",
            ),
        ];
        for (p, code, message) in cases {
            g.ready().await.expect("ready");
            let req = Request::new(Bytes::from_static(b"x"));
            let path = PathAndQuery::from_static(p);
            let st = g.unary(req, path, RawCodec).await.expect_err("refused");
            assert_eq!((st.code(), st.message()), (code, message), "{p}");
        }
    };
    tokio::time::timeout(WAIT, calls)
        .await
        .expect("calls finish in time");
}

/// A connection over `server.max_connections` is answered by the refusal
/// server, which answers a gRPC call as the gateway's other refusals do.
#[tokio::test]
async fn a_connection_over_the_cap_gets_a_grpc_status() {
    let cfg = Cfg::new()
        .set("server.max_connections", 1)
        .listener_plain()
        .route(Route::upstream("/", "down"))
        .upstream("down", &["127.0.0.1:9"])
        .build();
    let gw = TestGateway::start(&cfg).await;
    // Holds the one place (an HTTP/1.1 request, answered, the connection kept).
    let mut held = tokio::net::TcpStream::connect(gw.http())
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut held, b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("request");
    let mut buf = [0u8; 12];
    tokio::time::timeout(
        WAIT,
        tokio::io::AsyncReadExt::read_exact(&mut held, &mut buf),
    )
    .await
    .expect("answered in time")
    .expect("answer");
    let call = async {
        let mut g = client(&gw).await;
        let req = Request::new(Bytes::from_static(b"x"));
        let path = PathAndQuery::from_static("/t.Echo/Unary");
        g.unary(req, path, RawCodec).await.expect_err("refused")
    };
    let st = tokio::time::timeout(WAIT, call)
        .await
        .expect("refused in time");
    assert_eq!(
        (st.code(), st.message()),
        (
            Code::Unavailable,
            "server is at its connection limit, retry later"
        )
    );
}

/// A stream of what `rx` receives, ending when its senders are gone.
fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
}
