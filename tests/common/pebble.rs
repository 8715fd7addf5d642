//! Pebble, the ACME test CA (Debian `pebble`), for `tests/it/acme.rs`: a
//! `pebble` child and a `pebble-challtestsrv` child as its DNS server (every
//! A query answered with 127.0.0.1, no AAAA), on free ports of 127.0.0.1.
//! Pebble's own HTTPS certificate is made here (it is the `ca_root` the
//! gateway trusts); its validation ports point at the gateway's listeners.
//! Both children are killed by PID on drop. Without the package these tests
//! fail, never skip (`scripts/test.sh` installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::redis::free_ports;
use super::{eventually, WAIT};

/// Pebble's settings.
pub struct PebbleOpts {
    /// Where Pebble sends http-01 validations (the gateway's plain listener).
    pub http_port: u16,
    /// Where Pebble sends tls-alpn-01 validations (the gateway's TLS listener).
    pub tls_port: u16,
    /// Lifetime of the certificates it issues, in seconds (Pebble's default: 5 years).
    pub validity_secs: Option<u64>,
    /// The ACME port (the directory URL's); default: a free one.
    pub listen_port: Option<u16>,
}

pub struct Pebble {
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// Pebble's HTTPS certificate (self-signed): the gateway's `ca_root`.
    pub ca_root: PathBuf,
    mgmt: u16,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(cmd: &mut Command, name: &str) -> Child {
    match cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "{name} is not installed: run scripts/test.sh (it installs the Debian package \
             `pebble`) or `apt-get install pebble`"
        ),
        Err(e) => panic!("cannot start {name}: {e}"),
    }
}

async fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

impl Pebble {
    pub async fn start(opts: PebbleOpts) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = wsgate::certs::generate_self_signed(&["localhost".into(), "127.0.0.1".into()])
            .expect("pebble's certificate");
        let ca_root = dir.path().join("pebble.crt");
        let key = dir.path().join("pebble.key");
        std::fs::write(&ca_root, &g.cert_pem).expect("write");
        std::fs::write(&key, &g.key_pem).expect("write");
        let [listen, mgmt, dns, dns_mgmt] = free_ports();
        let listen = opts.listen_port.unwrap_or(listen);
        let mut cfg = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": ca_root,
            "privateKey": key,
            "httpPort": opts.http_port,
            "tlsPort": opts.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = opts.validity_secs {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let cfg_path = dir.path().join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).expect("write");
        let mut children = vec![spawn(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""]),
            "pebble-challtestsrv",
        )];
        children.push(spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&cfg_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                // Validate at once, and never reject a nonce: the tests
                // measure the gateway, not its retries of Pebble's noise.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0"),
            "pebble",
        ));
        let p = Pebble {
            children,
            dir,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            ca_root,
            mgmt,
        };
        for (port, what) in [
            (dns, "pebble-challtestsrv"),
            (listen, "pebble"),
            (mgmt, "pebble management"),
        ] {
            assert!(
                eventually(WAIT, || listening(port)).await,
                "{what} never listened on 127.0.0.1:{port}"
            );
        }
        p
    }

    /// Kills both children (by PID) and reaps them; the files stay.
    pub fn stop(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Pebble's issuing root (PEM, from its management interface): served
    /// certificates must chain to it.
    pub async fn root(&self) -> String {
        let tls = super::tls::tls_client(self.ca_root.to_str().expect("utf-8"), &[]);
        let body = https_get(self.mgmt, tls, "/roots/0").await;
        assert!(body.contains("BEGIN CERTIFICATE"), "not a PEM root: {body}");
        body
    }
}

/// `GET path` over HTTPS/1.0 on 127.0.0.1:`port`: the body.
async fn https_get(port: u16, tls: Arc<rustls::ClientConfig>, path: &str) -> String {
    let work = async {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut s = super::tls::tls_connect(addr, tls, "localhost").await;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let mut out = Vec::new();
        // Go closes with a TLS alert-less EOF after HTTP/1.0; keep what came.
        let _ = s.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_string()
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("pebble's management interface answers within 10 s")
}
