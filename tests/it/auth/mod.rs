//! Token authentication over real sockets (spec §9): tokens made here with
//! keys generated here (HS256, RS256, PS256, ES256, ES384, EdDSA; PEM files
//! and a JWKS), verified by a real gateway in front of real upstreams.
//!
//! This module holds the keys, upstreams and helpers; the tests are in
//! [`tokens`], [`headers`] and [`websocket`].

#![allow(clippy::result_large_err)]

mod headers;
mod tokens;
mod websocket;

use crate::common;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use common::raw::read_head;
use common::*;
use http::Response;
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key and its public half as PEM.
struct Key {
    alg: Algorithm,
    enc: EncodingKey,
    public_pem: String,
}

impl Key {
    fn generate(alg: Algorithm) -> Self {
        let rc = match alg {
            Algorithm::RS256 | Algorithm::PS256 => &rcgen::PKCS_RSA_SHA256,
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::ES384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            other => panic!("no key pair for {other:?}"),
        };
        let kp = rcgen::KeyPair::generate_for(rc).expect("key pair");
        let private = kp.serialize_pem();
        let enc = match alg {
            Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(private.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private.as_bytes()),
            _ => EncodingKey::from_ec_pem(private.as_bytes()),
        }
        .expect("encoding key");
        Self {
            alg,
            enc,
            public_pem: kp.public_key_pem(),
        }
    }

    fn hmac(secret: &[u8]) -> Self {
        Self {
            alg: Algorithm::HS256,
            enc: EncodingKey::from_secret(secret),
            public_pem: String::new(),
        }
    }

    fn sign(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut h = Header::new(self.alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, &self.enc).expect("sign")
    }
}

fn claims(sub: &str, aud: &str, exp: i64) -> Value {
    json!({ "sub": sub, "aud": aud, "iss": "https://auth.example.test", "exp": exp, "roles": ["admin", "dev"] })
}

fn valid(sub: &str) -> Value {
    claims(sub, "wsgate", now() as i64 + 3600)
}

/// An upstream answering with the identity headers it received.
async fn whoami_upstream() -> SocketAddr {
    http_upstream(|req| async move {
        let h = |n: &str| {
            // As bytes: a claim in UTF-8 arrives as it is (obs-text).
            req.headers().get(n).map_or("-".to_string(), |v| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            })
        };
        // Fields named with `_`, which CGI-style readers take for dashed ones.
        let underscored: Vec<&str> = req
            .headers()
            .keys()
            .map(|k| k.as_str())
            .filter(|k| k.contains('_'))
            .collect();
        let body = format!(
            "id={} roles={} auth={} underscored={}",
            h("x-user-id"),
            h("x-user-roles"),
            h("authorization").len(),
            underscored.join(",")
        );
        Response::new(Full::new(Bytes::from(body)))
    })
    .await
}

/// The response head to a raw request (read up to the blank line, so a
/// kept-alive connection is not waited on).
async fn head_of(addr: SocketAddr, request: String) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_head(&mut s).await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn get_auth(addr: SocketAddr, path: &str, token: &str) -> Reply {
    get_with(addr, path, &[("authorization", &bearer(token))]).await
}

/// A 401 that tells the client nothing about which check failed.
fn assert_invalid(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text());
    assert_eq!(
        r.headers["www-authenticate"], "Bearer realm=\"wsgate\", error=\"invalid_token\"",
        "{what}"
    );
    assert_eq!(r.text(), "invalid token\n", "{what}");
}

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn hs_gateway_cfg(up: SocketAddr) -> Cfg {
    Cfg::new()
        .listener_plain()
        .admin()
        .upstream("api", &[up])
        .set("auth.users.hmac_secret", format!("base64:{}", b64(SECRET)))
        .set("auth.users.audience", "wsgate")
        .set("auth.users.leeway", "0s")
}

async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the upstream reports in time")
        .expect("upstream alive")
}
