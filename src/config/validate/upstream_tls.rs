//! TLS to an upstream's servers: the scheme of each `servers` entry
//! (`https://`, `wss://`, `http://`, `ws://` or none), `tls`, and the
//! `tls_ca` / `tls_server_name` / `tls_client_cert` / `tls_client_key` keys
//! that only make sense with it (docs/tls.md); and `protocol`, whose `h2`
//! needs TLS and `h2c` needs none.

use std::ops::Range;

use super::ctx::Ctx;
use crate::config::file::*;
use crate::config::*;

/// What each server entry's scheme said about TLS, with the entry's position.
pub(super) type Schemes = Vec<(Option<bool>, Range<usize>)>;

/// A server entry's address without its scheme, and what the scheme said:
/// `Some(true)` for `https`/`wss`, `Some(false)` for `http`/`ws`, `None`
/// without one. A scheme without a port gets its default port (443, 80).
/// `Err` names the scheme when it is none of those.
pub(super) fn split_scheme(entry: &str) -> Result<(String, Option<bool>), String> {
    let Some((scheme, rest)) = entry.split_once("://") else {
        return Ok((entry.to_string(), None));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => true,
        "http" | "ws" => false,
        other => {
            return Err(format!(
                "scheme {other:?} is not one of https, wss, http, ws"
            ))
        }
    };
    // A trailing slash is harmless; a path is not (routes own paths).
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let has_port = match rest.rsplit_once(':') {
        // `[v6]` alone ends in `]`; `[v6]:port` and `host:port` do not.
        Some((_, port)) => !port.ends_with(']'),
        None => false,
    };
    let addr = if has_port {
        rest.to_string()
    } else {
        format!("{rest}:{}", if tls { 443 } else { 80 })
    };
    Ok((addr, Some(tls)))
}

/// The upstream's TLS settings. `schemes` is what each server's scheme
/// said, with the entry's position.
pub(super) fn upstream_tls(
    cx: &mut Ctx,
    name: &str,
    u: &UpstreamFile,
    schemes: &Schemes,
) -> Option<UpstreamTlsConfig> {
    let k = |s: &str| format!("upstream.{name}.{s}");
    let explicit = u.tls.as_ref().map(|t| (*t.get_ref(), t.span()));
    let first_tls = schemes.iter().find(|(s, _)| *s == Some(true));
    let first_plain = schemes.iter().find(|(s, _)| *s == Some(false));
    match (explicit.clone(), first_tls, first_plain) {
        (_, Some(_), Some((_, sp))) => {
            cx.at(
                sp.clone(),
                format!(
                    "{}: mixes https:// (or wss://) and http:// (or ws://) servers; one upstream is either TLS or not",
                    k("servers")
                ),
            );
            return None;
        }
        (Some((false, sp)), Some(_), None) => {
            cx.at(
                sp,
                format!("{}: false, but a server is https:// or wss://", k("tls")),
            );
            return None;
        }
        (Some((true, sp)), None, Some(_)) => {
            cx.at(
                sp,
                format!("{}: true, but a server is http:// or ws://", k("tls")),
            );
            return None;
        }
        _ => {}
    }
    let on = explicit.map(|(t, _)| t).unwrap_or(false) || first_tls.is_some();
    let extra = [
        ("tls_ca", &u.tls_ca),
        ("tls_server_name", &u.tls_server_name),
        ("tls_client_cert", &u.tls_client_cert),
        ("tls_client_key", &u.tls_client_key),
    ];
    if !on {
        for (key, v) in extra {
            if let Some(v) = v {
                cx.at(
                    v.span(),
                    format!(
                        "{}: needs TLS to the upstream (`tls = true`, or https:// servers)",
                        k(key)
                    ),
                );
            }
        }
        return None;
    }
    let ca = u.tls_ca.as_ref().and_then(|v| {
        let path = cx.readable_file(v, &k("tls_ca"))?;
        match load_roots(&path) {
            Ok(_) => Some(path),
            Err(why) => {
                cx.at(
                    v.span(),
                    format!("{}: {:?}: {why}", k("tls_ca"), v.get_ref()),
                );
                None
            }
        }
    });
    let server_name = u.tls_server_name.as_ref().and_then(|v| {
        let s = v.get_ref().trim().to_ascii_lowercase();
        match rustls_pki_types::ServerName::try_from(s.as_str()) {
            Ok(_) => Some(s),
            Err(_) => {
                cx.at(
                    v.span(),
                    format!(
                        "{}: {:?} is not a DNS name or IP address",
                        k("tls_server_name"),
                        v.get_ref()
                    ),
                );
                None
            }
        }
    });
    let client = match (&u.tls_client_cert, &u.tls_client_key) {
        (Some(c), Some(key)) => {
            Some(cx.cert_pair_named(c, key, &k("tls_client_cert"), &k("tls_client_key")))
        }
        (Some(v), None) => {
            cx.at(
                v.span(),
                format!("{}: needs `tls_client_key`", k("tls_client_cert")),
            );
            None
        }
        (None, Some(v)) => {
            cx.at(
                v.span(),
                format!("{}: needs `tls_client_cert`", k("tls_client_key")),
            );
            None
        }
        (None, None) => None,
    };
    Some(UpstreamTlsConfig {
        ca,
        server_name,
        client,
    })
}

/// `protocol`: `h1` (default), `h2` (TLS only) or `h2c` (cleartext only).
pub(super) fn protocol(cx: &mut Ctx, name: &str, u: &UpstreamFile, tls: bool) -> UpstreamProtocol {
    let Some(v) = &u.protocol else {
        return UpstreamProtocol::H1;
    };
    let key = format!("upstream.{name}.protocol");
    let (p, problem) = match v.get_ref().as_str() {
        "h1" => (UpstreamProtocol::H1, None),
        "h2" if tls => (UpstreamProtocol::H2, None),
        "h2" => (
            UpstreamProtocol::H1,
            Some(
                "\"h2\" needs TLS (https:// servers or `tls = true`); cleartext HTTP/2 is \"h2c\""
                    .to_string(),
            ),
        ),
        "h2c" if !tls => (UpstreamProtocol::H2c, None),
        "h2c" => (
            UpstreamProtocol::H1,
            Some("\"h2c\" is cleartext HTTP/2; over TLS use \"h2\"".to_string()),
        ),
        other => (
            UpstreamProtocol::H1,
            Some(format!("{other:?} is not one of \"h1\", \"h2\", \"h2c\"")),
        ),
    };
    if let Some(m) = problem {
        cx.at(v.span(), format!("{key}: {m}"));
    }
    p
}

#[cfg(test)]
pub(super) mod tests {
    use super::split_scheme;
    use std::path::Path;

    /// A config of one listener, `[upstream.api]` with `upstream`'s lines,
    /// and a route to it: parsed, or its error as text.
    pub(in crate::config) fn check(upstream: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\n[upstream.api]\n{upstream}\n[[route]]\npath = \"/\"\nupstream = \"api\"\n"
        );
        crate::config::parse(Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn https_servers_or_tls_true_turn_tls_on() {
        let c = check("servers = [\"https://a.test:8443\"]").unwrap();
        let u = &c.upstreams["api"];
        assert_eq!(u.servers[0].addr, "a.test:8443");
        let tls = u.tls.as_ref().unwrap();
        assert_eq!((tls.ca.as_ref(), tls.server_name.as_ref()), (None, None));
        let c = check("servers = [\"10.0.0.1:443\"]\ntls = true\ntls_server_name = \"API.test\"")
            .unwrap();
        let tls = c.upstreams["api"].tls.clone().unwrap();
        assert_eq!(tls.server_name.as_deref(), Some("api.test"));
        assert!(check("servers = [\"ws://a:1\"]").unwrap().upstreams["api"]
            .tls
            .is_none());
    }

    #[test]
    fn tls_mistakes_name_the_key_and_line() {
        let e = check("servers = [\"https://a:1\", \"http://b:1\"]").unwrap_err();
        assert!(e.starts_with("t.toml:4:27:"), "{e}");
        assert!(e.contains("upstream.api.servers: mixes https://"), "{e}");
        let e = check("servers = [\"https://a:1\"]\ntls = false").unwrap_err();
        assert!(
            e.contains("t.toml:5:7: upstream.api.tls: false, but"),
            "{e}"
        );
        let e = check("servers = [\"a:1\"]\ntls_ca = \"ca.pem\"").unwrap_err();
        assert!(
            e.contains("t.toml:5:10: upstream.api.tls_ca: needs TLS to the upstream"),
            "{e}"
        );
        let e = check("servers = [\"https://a:1\"]\ntls_ca = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(e.contains("upstream.api.tls_ca: cannot read"), "{e}");
        let e = check("servers = [\"https://a:1\"]\ntls_server_name = \"a b\"").unwrap_err();
        assert!(
            e.contains("tls_server_name: \"a b\" is not a DNS name"),
            "{e}"
        );
        let e = check("servers = [\"https://a:1\"]\ntls_client_cert = \"x.crt\"").unwrap_err();
        assert!(e.contains("tls_client_cert: needs `tls_client_key`"), "{e}");
        let e = check("servers = [\"a:1\"]\nprotocol = \"h2\"").unwrap_err();
        assert!(
            e.contains("t.toml:5:12: upstream.api.protocol: \"h2\" needs TLS"),
            "{e}"
        );
        let e = check("servers = [\"https://a:1\"]\nprotocol = \"h2c\"").unwrap_err();
        assert!(
            e.contains("upstream.api.protocol: \"h2c\" is cleartext"),
            "{e}"
        );
        let c = check("servers = [\"https://a:1\"]\nprotocol = \"h2\"").unwrap();
        assert_eq!(
            c.upstreams["api"].protocol,
            crate::config::UpstreamProtocol::H2
        );
        let e = check("servers = [\"ftp://a:1\"]").unwrap_err();
        assert!(e.contains("scheme \"ftp\" is not one of"), "{e}");
    }

    #[test]
    fn a_client_certificate_is_checked_like_a_listener_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = crate::certs::write_dev_cert(dir.path(), &["gw".into()]).unwrap();
        let ok = format!(
            "servers = [\"https://a:1\"]\ntls_client_cert = {:?}\ntls_client_key = {:?}",
            crt.display(),
            key.display()
        );
        let c = check(&ok).unwrap();
        assert!(c.upstreams["api"].tls.as_ref().unwrap().client.is_some());
        let other = crate::certs::write_dev_cert(&dir.path().join("o"), &["o".into()]).unwrap();
        let bad = format!(
            "servers = [\"https://a:1\"]\ntls_client_cert = {:?}\ntls_client_key = {:?}",
            crt.display(),
            other.1.display()
        );
        let e = check(&bad).unwrap_err();
        assert!(e.contains("upstream.api.tls_client_cert: "), "{e}");
        assert!(e.contains("does not belong to the key"), "{e}");
    }

    #[test]
    fn schemes_set_tls_and_default_ports() {
        let ok = |s: &str| split_scheme(s).unwrap();
        assert_eq!(ok("a:1"), ("a:1".into(), None));
        assert_eq!(ok("https://a:8443"), ("a:8443".into(), Some(true)));
        assert_eq!(ok("wss://a"), ("a:443".into(), Some(true)));
        assert_eq!(ok("http://a/"), ("a:80".into(), Some(false)));
        assert_eq!(ok("ws://[::1]"), ("[::1]:80".into(), Some(false)));
        assert_eq!(ok("HTTPS://[::1]:9"), ("[::1]:9".into(), Some(true)));
        assert!(split_scheme("ftp://a:1").is_err());
    }
}
