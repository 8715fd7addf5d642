//! Hardening, round 6 (the fifth black-box probe: reloads, drains, the admin
//! listener, upstream exchanges, config checks). Real `wsgate` processes
//! where signals are the subject; every wait is bounded.

use crate::common;

use std::net::SocketAddr;

use common::process::WsgateProc;
use common::redis::free_ports;
use common::*;
use http::StatusCode;

/// A config naming a file that is no regular file (a FIFO nobody writes,
/// `/dev/zero`) is refused at once with the key and line. Before, the
/// reload waited on the FIFO for good, after which neither SIGHUP nor
/// SIGTERM did anything, and `/dev/zero` was read until memory ran out.
#[tokio::test]
async fn a_reload_naming_a_fifo_or_a_device_is_refused_and_sigterm_still_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").expect("write");
    let [port] = free_ports();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cfg = |secret: &std::path::Path| {
        Cfg::new()
            .set("log.access_log", false)
            .listener(Listener::at(addr))
            .set(
                "auth.users.hmac_secret",
                format!("file:{}", secret.display()),
            )
            .route_app("/echo", "echo")
            .build()
    };
    let path = dir.path().join("wsgate.toml");
    std::fs::write(&path, cfg(&secret)).expect("write config");
    let mut gw = WsgateProc::start(&path);
    gw.wait_for("listening", WAIT);

    for bad in [fifo.as_path(), std::path::Path::new("/dev/zero")] {
        gw.seen.clear();
        std::fs::write(&path, cfg(bad)).expect("write config");
        gw.signal("HUP");
        let line = gw.wait_for("reload refused", WAIT);
        assert!(
            line.contains("auth.users.hmac_secret") && line.contains("not a regular file"),
            "{line}"
        );
    }
    // Still serving, and a good config still reloads.
    let r = get(addr, "/echo").await;
    assert_eq!(r.status, StatusCode::UPGRADE_REQUIRED, "{}", r.text());
    std::fs::write(&path, cfg(&secret)).expect("write config");
    gw.signal("HUP");
    gw.wait_for("configuration reloaded", WAIT);

    gw.signal("TERM");
    let exit = gw.exited(WAIT).await.expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}
