//! systemd integration of the real binary over real sockets: socket
//! activation (a listener bound here, passed as fd 3 with `LISTEN_FDS` and
//! `LISTEN_PID`) and `sd_notify` datagrams on a `NOTIFY_SOCKET` bound here:
//! READY=1 at start, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM.

use crate::common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};

use common::process::WsgateProc;
use common::*;

/// The next notification, within `WAIT`.
fn next_state(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("a notification within the wait");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_and_readiness_notifications() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = named_upstream("activated").await;
    // The socket systemd would hold: bound here, before wsgate runs.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    // And one the config does not listen on: wsgate closes it.
    let stray = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let stray_addr = stray.local_addr().expect("addr");
    let cfg = Cfg::new()
        .set("server.shutdown_grace", "2s")
        .set("server.drain_window", "100ms")
        .listener(Listener::at(addr))
        .upstream("api", &[api])
        .route_upstream("/api/", "api");
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, cfg.build()).expect("write config");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");

    // The listeners arrive as stdin and stdout; the shell moves them to fds
    // 3 and 4 and execs wsgate with LISTEN_PID set to its own pid (exec
    // keeps it).
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"exec 3<&0 4>&1 0</dev/null 1>/dev/null; LISTEN_PID=$$ LISTEN_FDS=2 exec "$0" -c "$1""#)
        .arg(env!("CARGO_BIN_EXE_wsgate"))
        .arg(&path)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(listener)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(stray)));
    let mut p = WsgateProc::spawn(cmd);

    assert_eq!(next_state(&notify), "READY=1");
    p.wait_for("using the inherited listening socket", WAIT);
    let r = get(addr, "/api/x").await;
    assert_eq!(r.text(), "activated");
    p.wait_for(
        "closed an inherited socket the config does not listen on",
        WAIT,
    );
    assert!(
        tokio::net::TcpStream::connect(stray_addr).await.is_err(),
        "the unused socket still accepts connections"
    );

    p.signal("HUP");
    let reloading = next_state(&notify);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let usec: u64 = reloading
        .rsplit('=')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC value");
    assert!(usec > 0);
    assert_eq!(next_state(&notify), "READY=1");
    p.wait_for("configuration reloaded", WAIT);

    p.signal("TERM");
    assert_eq!(next_state(&notify), "STOPPING=1");
    let status = p.exited(WAIT).await.expect("exits after the drain");
    assert!(status.success(), "{status}");
}
