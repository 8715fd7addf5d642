//! Unit tests of `[listener.tls.acme]` validation: defaults, and errors that
//! name the key and its line.

use std::path::Path;

use crate::config::{parse, AcmeChallenge, ListenerCert};

fn check(extra_listeners: &str, acme: &str) -> Result<crate::config::Config, String> {
    let text = format!(
        "{extra_listeners}\n[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls.acme]\n{acme}\n"
    );
    parse(Path::new("t.toml"), &text).map_err(|e| e.to_string())
}

const OK: &str = r#"directory = "https://acme.test/dir"
contact = ["mailto:ops@example.test"]
domains = ["A.example.test", "b.example.test"]
cache = "target/acme-cache-test"
"#;

#[test]
fn a_valid_table_is_read_with_defaults() {
    let cfg = check("", OK).expect("valid");
    let Some(tls) = &cfg.listeners[0].tls else {
        panic!("tls expected")
    };
    let ListenerCert::Acme(a) = &tls.default else {
        panic!("acme expected")
    };
    assert_eq!(a.domains, ["a.example.test", "b.example.test"]);
    assert_eq!(a.challenge, AcmeChallenge::TlsAlpn01);
    assert_eq!(a.contact, ["mailto:ops@example.test"]);
    assert!(a.ca_root.is_none());
}

#[test]
fn errors_name_the_key_and_line() {
    let e = check("", &format!("{OK}challenge = \"dns-01\"")).unwrap_err();
    assert!(
        e.contains("t.toml:9:13: listener[0].tls.acme.challenge: \"dns-01\" is not one of"),
        "{e}"
    );
    let e = check("", &OK.replace("A.example.test", "*.example.test")).unwrap_err();
    assert!(
        e.contains(":7:") && e.contains("wildcard certificates need the dns-01"),
        "{e}"
    );
    let e = check(
        "",
        &OK.replace("https://acme.test/dir", "http://acme.test/dir"),
    )
    .unwrap_err();
    assert!(
        e.contains(":5:") && e.contains("acme.directory") && e.contains("https://"),
        "{e}"
    );
    let e = check(
        "",
        &OK.replace("mailto:ops@example.test", "ops@example.test"),
    )
    .unwrap_err();
    assert!(
        e.contains("acme.contact: \"ops@example.test\" is not a \"mailto:"),
        "{e}"
    );
    let e = check("", &format!("{OK}ca_root = \"/nonexistent/ca.pem\"")).unwrap_err();
    assert!(e.contains("acme.ca_root: \"/nonexistent/ca.pem\""), "{e}");
    let e = check(
        "",
        &OK.replace("[\"A.example.test\", \"b.example.test\"]", "[]"),
    )
    .unwrap_err();
    assert!(e.contains("acme.domains: list at least one domain"), "{e}");
}

#[test]
fn http_01_needs_a_plain_listener() {
    let acme = format!("{OK}challenge = \"http-01\"");
    let e = check("", &acme).unwrap_err();
    assert!(
        e.contains("acme.challenge: \"http-01\" is answered on plain listeners"),
        "{e}"
    );
    let plain = "[[listener]]\naddr = \"127.0.0.1:0\"";
    let cfg = check(plain, &acme).expect("with a plain listener");
    let Some(tls) = &cfg.listeners[1].tls else {
        panic!("tls expected")
    };
    assert!(matches!(&tls.default, ListenerCert::Acme(a) if a.challenge == AcmeChallenge::Http01));
}

#[test]
fn acme_excludes_cert_and_key() {
    let text = format!(
        "[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n[listener.tls.acme]\n{OK}"
    );
    let e = parse(Path::new("t.toml"), &text).unwrap_err().to_string();
    assert!(
        e.contains("listener[0].tls.acme: use either cert/key or [listener.tls.acme], not both"),
        "{e}"
    );
    let text = "[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls]\nclient_auth = \"optional\"\n";
    let e = parse(Path::new("t.toml"), text).unwrap_err().to_string();
    assert!(
        e.contains(
            "t.toml:1:1: listener[0].tls: needs cert and key, or a [listener.tls.acme] table"
        ),
        "{e}"
    );
}

/// Two tables for the same names and cache must be equal: otherwise two
/// tasks order the names and write the same files (the TLS review).
#[test]
fn two_tables_for_the_same_names_and_cache_must_be_equal() {
    let first = format!("[[listener]]\naddr = \"127.0.0.1:0\"\n[listener.tls.acme]\n{OK}");
    assert!(check(&first, OK).is_ok(), "equal tables share one setting");
    let e = check(&first, &OK.replace("mailto:ops", "mailto:other")).unwrap_err();
    assert!(
        e.contains(
            "listener[1].tls.acme: the same directory, cache and domains as listener[0].tls.acme"
        ),
        "{e}"
    );
    let reordered = OK.replace(
        r#"["A.example.test", "b.example.test"]"#,
        r#"["b.example.test", "A.example.test"]"#,
    );
    assert!(check(&first, &reordered)
        .unwrap_err()
        .contains("another order"));
    let own_cache = OK.replace("acme-cache-test", "acme-cache-other");
    assert!(check(&first, &own_cache.replace("mailto:ops", "mailto:other")).is_ok());
}
