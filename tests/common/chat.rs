//! Clients of the chat app: a WebSocket [`Client`] that reads JSON frames with
//! deadlines, a streaming [`Sse`] reader, and the `/chat/api/online` view.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{get, json_of, WAIT};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A chat WebSocket client.
pub struct Client {
    pub ws: Ws,
    pub user: String,
}

impl Client {
    /// Connects as `user` (or as a guest when `None`) and reads the welcome.
    pub async fn connect(addr: SocketAddr, user: Option<&str>) -> (Self, Value) {
        let url = match user {
            Some(u) => format!("ws://{addr}/chat/ws?user={u}"),
            None => format!("ws://{addr}/chat"),
        };
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("chat handshake");
        let mut c = Client {
            ws,
            user: user.unwrap_or("guest").to_string(),
        };
        let welcome = c.recv().await;
        assert_eq!(
            welcome["type"], "welcome",
            "first frame is the welcome: {welcome}"
        );
        c.user = welcome["user"].as_str().expect("user").to_string();
        (c, welcome)
    }

    /// Connects as `user` and reads the welcome.
    pub async fn new(addr: SocketAddr, user: &str) -> Self {
        Self::connect(addr, Some(user)).await.0
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Sends a message to `room`.
    pub async fn msg(&mut self, room: &str, text: &str) {
        self.send(json!({"type":"msg","room":room,"text":text}))
            .await;
    }

    /// The next JSON frame (pings and pongs skipped), within [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no frame within {WAIT:?}", self.user))
                .expect("stream ended")
                .expect("websocket error");
            match m {
                Message::Text(t) => {
                    return serde_json::from_str(&t).expect("server frames are JSON")
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("{}: unexpected {other:?}", self.user),
            }
        }
    }

    /// The next frame if one arrives within `d`.
    pub async fn try_recv(&mut self, d: Duration) -> Option<Value> {
        tokio::time::timeout(d, self.recv()).await.ok()
    }

    /// Skips frames until one matches.
    pub async fn recv_until(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: never got {what}",
                self.user
            );
            let v = self.recv().await;
            if f(&v) {
                return v;
            }
        }
    }

    /// Joins `room` and waits for its own join.
    pub async fn join(&mut self, room: &str) {
        self.send(json!({"type":"join","room":room})).await;
        let me = self.user.clone();
        self.recv_until("own join", |v| {
            is_presence(v, &me, "join") && v["room"] == room
        })
        .await;
    }

    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], "error", "expected error {code}, got {v}");
        assert_eq!(v["code"], code, "{v}");
        v
    }

    /// Sends a message to `room` and waits for its own copy: afterwards every
    /// event delivered to this client before the message has been read.
    pub async fn sentinel(&mut self, room: &str, text: &str) -> Value {
        self.msg(room, text).await;
        let v = self.recv().await;
        assert!(
            is_msg(&v, text),
            "{}: expected own sentinel {text:?}, got {v}",
            self.user
        );
        v
    }

    /// Sends a message to `room` and reads until its own copy comes back.
    pub async fn drain_to(&mut self, room: &str, text: &str) -> Value {
        self.msg(room, text).await;
        self.recv_until(text, |v| is_msg(v, text)).await
    }

    /// The close code the server ends with (reading past any other frames).
    pub async fn close_code(&mut self) -> Option<CloseCode> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("close within deadline")
            {
                Some(Ok(Message::Close(c))) => return c.map(|c| c.code),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

pub fn is_presence(v: &Value, user: &str, state: &str) -> bool {
    v["type"] == "presence" && v["user"] == user && v["state"] == state
}

pub fn is_msg(v: &Value, text: &str) -> bool {
    v["type"] == "msg" && v["text"] == text
}

/// `/chat/api/online`: (user, node) pairs.
pub async fn online(addr: SocketAddr) -> Vec<(String, String)> {
    let r = get(addr, "/chat/api/online").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    json_of(&r)["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| {
            (
                u["user"].as_str().expect("user").to_string(),
                u["node"].as_str().expect("node").to_string(),
            )
        })
        .collect()
}

/// `/chat/api/online`: the user names.
pub async fn online_users(addr: SocketAddr) -> Vec<String> {
    online(addr).await.into_iter().map(|(u, _)| u).collect()
}

/// A streaming SSE reader.
pub struct Sse {
    body: Incoming,
    buf: String,
    conn: tokio::task::JoinHandle<()>,
    _tx: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Sse {
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        last_event_id: Option<&str>,
    ) -> (Self, http::response::Parts) {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut b = Request::get(path)
            .header("host", "localhost")
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            b = b.header("last-event-id", id);
        }
        let resp = tokio::time::timeout(
            WAIT,
            tx.send_request(b.body(Full::new(Bytes::new())).expect("request")),
        )
        .await
        .expect("SSE response head within deadline")
        .expect("response");
        let (parts, body) = resp.into_parts();
        (
            Sse {
                body,
                buf: String::new(),
                conn,
                _tx: tx,
            },
            parts,
        )
    }

    /// The next event: its `id:` and its JSON data (comments and `retry:` skipped).
    pub async fn next(&mut self) -> (String, Value) {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_string());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(v.to_string());
                    }
                }
                if let Some(d) = data {
                    let id = id.expect("every event has an id");
                    return (id, serde_json::from_str(&d).expect("SSE data is JSON"));
                }
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .expect("SSE event within deadline")
                .expect("stream open")
                .expect("body ok");
            if let Ok(d) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&d).expect("utf-8"));
            }
        }
    }

    /// Skips events until one matches.
    pub async fn next_until(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> (String, Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "SSE never got {what}"
            );
            let (id, v) = self.next().await;
            if f(&v) {
                return (id, v);
            }
        }
    }

    /// The response body, to read past the events (its end, say).
    pub fn body_mut(&mut self) -> &mut Incoming {
        &mut self.body
    }

    pub fn close(self) {
        self.conn.abort();
    }
}
