//! The `openssl` command line, for what only a foreign TLS stack shows:
//! OCSP responses made by a real responder (`openssl ocsp`) and what a
//! client sees (`openssl s_client -status`, `-reconnect`). Missing `openssl`
//! fails the test loudly (scripts/test.sh installs it).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use super::WAIT;

/// Runs `openssl ARGS` in `dir` and returns its stdout; panics with stderr
/// when it fails.
pub fn run(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("the openssl command is needed for this test: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes `out` (DER), an OCSP response saying `cert` is good, signed by the
/// CA itself, fresh for `days`: a request with `openssl ocsp -reqout`, then
/// the responder (`-index`, `-rsigner`) answering it to a file.
pub fn ocsp_response(dir: &Path, ca_crt: &str, ca_key: &str, cert: &str, days: u32, out: &str) {
    let serial = run(dir, &["x509", "-noout", "-serial", "-in", cert]);
    let serial = serial.trim().trim_start_matches("serial=").to_string();
    let subject = run(
        dir,
        &[
            "x509", "-noout", "-subject", "-nameopt", "compat", "-in", cert,
        ],
    );
    let subject = subject
        .trim()
        .trim_start_matches("subject=")
        .trim()
        .to_string();
    // index.txt: status, expiry, revocation date, serial, file, subject.
    std::fs::write(
        dir.join("index.txt"),
        format!("V\t300101000000Z\t\t{serial}\tunknown\t{subject}\n"),
    )
    .expect("write index");
    let req = "ocsp-req.der";
    run(
        dir,
        &[
            "ocsp",
            "-issuer",
            ca_crt,
            "-cert",
            cert,
            "-no_nonce",
            "-reqout",
            req,
        ],
    );
    let days = days.to_string();
    run(
        dir,
        &[
            "ocsp",
            "-index",
            "index.txt",
            "-rsigner",
            ca_crt,
            "-rkey",
            ca_key,
            "-CA",
            ca_crt,
            "-reqin",
            req,
            "-respout",
            out,
            "-ndays",
            &days,
        ],
    );
}

/// `openssl s_client` against `addr` with SNI `sni`, trusting `ca`, plus
/// `extra` arguments; stdin is closed so it leaves after the handshake.
/// Returns stdout and stderr together.
pub async fn s_client(dir: &Path, addr: SocketAddr, sni: &str, ca: &str, extra: &[&str]) -> String {
    s_client_with(dir, addr, sni, ca, extra, b"").await
}

/// [`s_client`] that first writes `input` (with `-ign_eof`, it then reads
/// until the server closes: a TLS 1.3 ticket arrives after the handshake).
pub async fn s_client_with(
    dir: &Path,
    addr: SocketAddr,
    sni: &str,
    ca: &str,
    extra: &[&str],
    input: &[u8],
) -> String {
    use tokio::io::AsyncWriteExt;
    let connect = addr.to_string();
    let mut args = vec![
        "s_client",
        "-connect",
        &connect,
        "-servername",
        sni,
        "-CAfile",
        ca,
    ];
    args.extend_from_slice(extra);
    let child = tokio::process::Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("the openssl command is needed for this test: {e}"));
    let mut child = child;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).await.expect("write to openssl");
        // Dropped: closing stdin tells s_client there is nothing more.
    }
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("openssl s_client finishes in time")
        .expect("openssl s_client output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
