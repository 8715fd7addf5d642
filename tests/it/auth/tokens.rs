//! Token verification: every algorithm (valid, forged, expired, wrong
//! audience, tampered, `none`), PS256 and JWKS keys picked by kid, tokens
//! minted by `wsgate token` and keys rotated by reload, and config errors.

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::Algorithm;

use super::{assert_invalid, b64, claims, get_auth, now, valid, whoami_upstream, Key, SECRET};
use crate::common::{get, Cfg, Route, TestGateway};

#[tokio::test]
async fn every_algorithm_valid_forged_expired_wrong_audience() {
    let keys: Vec<Key> = [
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ]
    .into_iter()
    .map(Key::generate)
    .collect();
    let up = whoami_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut pems = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let p = dir.path().join(format!("key{i}.pem"));
        std::fs::write(&p, &k.public_pem).unwrap();
        pems.push(toml::Value::from(p.to_str().unwrap()));
    }
    let toml = Cfg::new()
        .listener_plain()
        .upstream("api", &[up])
        .set("auth.users.hmac_secret", format!("base64:{}", b64(SECRET)))
        .set("auth.users.public_keys", pems)
        .set("auth.users.issuer", "https://auth.example.test")
        .set("auth.users.audience", "wsgate")
        .set("auth.users.leeway", "5s")
        .route(Route::upstream("/api/", "api").set("auth", "users"))
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    let addr = gw.http();

    let mut all = vec![Key::hmac(SECRET)];
    all.extend(keys);
    for k in &all {
        let name = format!("{:?}", k.alg);
        let r = get_auth(addr, "/api/x", &k.sign(&valid("alice"), None)).await;
        assert_eq!(r.status, 200, "{name} valid: {}", r.text());
        // Same algorithm, another key: the signature does not verify.
        let forger = match k.alg {
            Algorithm::HS256 => Key::hmac(b"another-secret-another-secret-another"),
            alg => Key::generate(alg),
        };
        let r = get_auth(addr, "/api/x", &forger.sign(&valid("mallory"), None)).await;
        assert_invalid(&r, &format!("{name} forged"));
        let expired = claims("alice", "wsgate", now() as i64 - 3600);
        assert_invalid(
            &get_auth(addr, "/api/x", &k.sign(&expired, None)).await,
            &format!("{name} expired"),
        );
        let other_aud = claims("alice", "someone-else", now() as i64 + 3600);
        assert_invalid(
            &get_auth(addr, "/api/x", &k.sign(&other_aud, None)).await,
            &format!("{name} audience"),
        );
        // A bit flipped in the payload.
        let t = k.sign(&valid("alice"), None);
        let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
        parts[1] = b64url(&serde_json::to_vec(&valid("admin")).unwrap());
        assert_invalid(
            &get_auth(addr, "/api/x", &parts.join(".")).await,
            &format!("{name} tampered"),
        );
    }
    // The `none` algorithm is never accepted.
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(&serde_json::to_vec(&valid("alice")).unwrap())
    );
    assert_invalid(&get_auth(addr, "/api/x", &none).await, "alg none");
    // A critical extension the gateway does not know (RFC 7515 §4.1.11),
    // on a token whose signature holds.
    let crit = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            crit: Some(vec!["exp".into()]),
            ..jsonwebtoken::Header::new(Algorithm::HS256)
        },
        &valid("alice"),
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_invalid(&get_auth(addr, "/api/x", &crit).await, "crit");
    // With issuer and audience set, `iss` and `aud` must be there and of the
    // right shape: missing, null or a number skipped the checks, and an `iss`
    // list containing the issuer passed.
    let hmac = Key::hmac(SECRET);
    let exp = now() + 3600;
    for (what, c) in [
        (
            "no aud",
            serde_json::json!({"sub": "a", "iss": "https://auth.example.test", "exp": exp}),
        ),
        (
            "aud number",
            serde_json::json!({"sub": "a", "aud": 5, "iss": "https://auth.example.test", "exp": exp}),
        ),
        (
            "aud null",
            serde_json::json!({"sub": "a", "aud": null, "iss": "https://auth.example.test", "exp": exp}),
        ),
        (
            "no iss",
            serde_json::json!({"sub": "a", "aud": "wsgate", "exp": exp}),
        ),
        (
            "iss number",
            serde_json::json!({"sub": "a", "aud": "wsgate", "iss": 5, "exp": exp}),
        ),
        (
            "iss list",
            serde_json::json!({"sub": "a", "aud": "wsgate", "iss": ["https://evil.test", "https://auth.example.test"], "exp": exp}),
        ),
        (
            "exp text",
            serde_json::json!({"sub": "a", "aud": "wsgate", "iss": "https://auth.example.test", "exp": "soon"}),
        ),
    ] {
        assert_invalid(&get_auth(addr, "/api/x", &hmac.sign(&c, None)).await, what);
    }
    let fraction = serde_json::json!({"sub": "a", "aud": ["wsgate"], "iss": "https://auth.example.test", "exp": exp as f64 + 0.5});
    let r = get_auth(addr, "/api/x", &hmac.sign(&fraction, None)).await;
    assert_eq!(
        r.status,
        200,
        "a fractional exp is a NumericDate: {}",
        r.text()
    );
    assert_invalid(&get_auth(addr, "/api/x", "garbage").await, "garbage");
    // No token at all: realm only, no error code (RFC 6750 §3.1).
    let r = get(addr, "/api/x").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"wsgate\"");
    assert_eq!(r.text(), "authentication required\n");
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test]
async fn ps256_and_jwks_keys_are_picked_by_kid() {
    let rsa = Key::generate(Algorithm::RS256);
    let ps = Key {
        alg: Algorithm::PS256,
        enc: rsa.enc.clone(),
        public_pem: String::new(),
    };
    let ec = Key::generate(Algorithm::ES256);
    let mut set = JwkSet { keys: Vec::new() };
    for (k, kid) in [(&rsa, "r1"), (&ec, "e1")] {
        let mut jwk = Jwk::from_encoding_key(&k.enc, k.alg).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        // No alg binding on the RSA key: RS256 and PS256 both use it.
        if kid == "r1" {
            jwk.common.key_algorithm = None;
        }
        set.keys.push(jwk);
    }
    // An `oct` key beside the verifier's own hmac_secret: a token naming
    // its kid is checked with it, one without a kid with the secret.
    let oct = Key::hmac(b"the-jwks-oct-key-the-jwks-oct-key-0123");
    let mut jwk = Jwk::from_encoding_key(&oct.enc, oct.alg).expect("oct jwk");
    jwk.common.key_id = Some("hk".into());
    set.keys.push(jwk);
    let up = whoami_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::to_vec(&set).unwrap()).unwrap();
    let toml = Cfg::new()
        .listener_plain()
        .upstream("api", &[up])
        .set("auth.idp.jwks", jwks.to_str().unwrap())
        .set("auth.idp.hmac_secret", format!("base64:{}", b64(SECRET)))
        .set("auth.idp.audience", "wsgate")
        .route(Route::upstream("/api/", "api").set("auth", "idp"))
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    let addr = gw.http();
    for (k, kid) in [(&rsa, "r1"), (&ps, "r1"), (&ec, "e1")] {
        let r = get_auth(addr, "/api/", &k.sign(&valid("alice"), Some(kid))).await;
        assert_eq!(r.status, 200, "{:?} kid {kid}: {}", k.alg, r.text());
    }
    assert_invalid(
        &get_auth(addr, "/api/", &rsa.sign(&valid("alice"), Some("nope"))).await,
        "unknown kid",
    );
    let hs = Key::hmac(SECRET);
    for (token, what) in [
        (oct.sign(&valid("alice"), Some("hk")), "oct key by kid"),
        (hs.sign(&valid("alice"), None), "hmac_secret without kid"),
    ] {
        let r = get_auth(addr, "/api/", &token).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
    }
    assert_invalid(
        &get_auth(addr, "/api/", &hs.sign(&valid("alice"), Some("hk"))).await,
        "the secret's token naming the oct key",
    );
    // The kid names the EC key, the token says RS256: no key fits.
    assert_invalid(
        &get_auth(addr, "/api/", &rsa.sign(&valid("alice"), Some("e1"))).await,
        "kid of another key type",
    );
    let expired = claims("alice", "wsgate", now() as i64 - 3600);
    assert_invalid(
        &get_auth(addr, "/api/", &ec.sign(&expired, Some("e1"))).await,
        "expired",
    );
    let forger = Key::generate(Algorithm::ES256);
    assert_invalid(
        &get_auth(addr, "/api/", &forger.sign(&valid("alice"), Some("e1"))).await,
        "forged",
    );
}

#[tokio::test]
async fn wsgate_token_mints_what_the_gateway_accepts_and_reload_rotates_keys() {
    let up = whoami_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, "a-development-secret-of-32-bytes-at-least\n").unwrap();
    let mut claims_map = toml::Table::new();
    claims_map.insert("X-User-Id".into(), "sub".into());
    claims_map.insert("X-User-Roles".into(), "rooms".into());
    let toml = Cfg::new()
        .listener_plain()
        .upstream("api", &[up])
        .set(
            "auth.users.hmac_secret",
            format!("file:{}", secret.display()),
        )
        .set("auth.users.audience", "wsgate")
        .route(
            Route::upstream("/api/", "api")
                .set("auth", "users")
                .set("auth_claims_to_headers", toml::Value::Table(claims_map)),
        )
        .build();
    let gw = TestGateway::start_in(&toml, dir).await;
    let config = gw.dir.path().join("wsgate.toml");
    let mint = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("-c")
            .arg(&config)
            .arg("token")
            .args(args)
            .output()
            .expect("run wsgate token")
    };
    let out = mint(&[
        "--sub",
        "alice",
        "--rooms",
        "lobby,team-7-*",
        "--ttl",
        "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let r = get_auth(gw.http(), "/api/", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("id=alice roles=lobby,team-7-* "),
        "{}",
        r.text()
    );

    let out = mint(&["--auth", "nope", "--sub", "alice"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [auth.nope]"));

    // Key rotation: a new secret on disk and a reload (what SIGHUP runs).
    std::fs::write(&secret, "the-next-secret-which-is-also-32-bytes-long").unwrap();
    gw.handle
        .reload(wsgate::config::load(&config).expect("config"))
        .await
        .expect("reload");
    assert_invalid(&get_auth(gw.http(), "/api/", &token).await, "old key");
    let out = mint(&["--sub", "bob"]);
    let fresh = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(get_auth(gw.http(), "/api/", &fresh).await.status, 200);
}

#[test]
fn config_errors_name_the_key_and_position() {
    let text = "[[listener]]\naddr = \"127.0.0.1:0\"\n\n[auth.users]\nhmac_secret = \"env:WSGATE_TEST_SURELY_UNSET\"\ntoken_from = [\"header\", \"form:x\"]\n\n[[route]]\npath = \"/\"\napp = \"echo\"\nauth = \"nobody\"\n";
    let e = wsgate::config::parse(std::path::Path::new("t.toml"), text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t.toml:5:15: auth.users.hmac_secret: environment variable WSGATE_TEST_SURELY_UNSET is not set"),
        "{e}"
    );
    assert!(e.contains("t.toml:6:25: auth.users.token_from"), "{e}");
    assert!(
        e.contains("t.toml:11:8: route[0].auth: no [auth.nobody]"),
        "{e}"
    );
    let short =
        "[[listener]]\naddr = \"127.0.0.1:0\"\n[auth.u]\nhmac_secret = \"base64:c2hvcnQ=\"\n";
    let e = wsgate::config::parse(std::path::Path::new("t.toml"), short)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 32 are required"), "{e}");
    assert!(!e.contains("c2hvcnQ"), "the secret is echoed: {e}");
}
