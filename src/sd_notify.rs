//! systemd's readiness protocol (`sd_notify`): one datagram of `KEY=VALUE`
//! lines to the Unix socket named by `NOTIFY_SOCKET`, when it is set. A few
//! lines over std's `UnixDatagram` rather than a crate: the `sd-notify` crate
//! would be this plus a dependency, `libsystemd` pulls in far more than the
//! one call, and the protocol is stable and documented (sd_notify(3)).
//! Without `NOTIFY_SOCKET` every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET {path}: {source}")]
    Send {
        path: String,
        source: std::io::Error,
    },
}

/// Sends `state` (newline-separated `KEY=VALUE` lines) to `NOTIFY_SOCKET`.
pub fn notify(state: &str) -> Result<(), NotifyError> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    send(&path, state).map_err(|source| NotifyError::Send { path, source })
}

fn send(path: &str, state: &str) -> std::io::Result<()> {
    let addr = match path.strip_prefix('@') {
        // A leading `@` names a socket in the abstract namespace.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// The service is up. `main_pid`: this process replaced the one systemd
/// started (a binary upgrade), so systemd should follow it.
pub fn ready(main_pid: bool) -> Result<(), NotifyError> {
    if main_pid {
        notify(&format!("MAINPID={}\nREADY=1", std::process::id()))
    } else {
        notify("READY=1")
    }
}

/// A reload starts (`Type=notify-reload` wants `MONOTONIC_USEC` with it);
/// [`ready`] ends it.
pub fn reloading() -> Result<(), NotifyError> {
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
}

/// The drain starts.
pub fn stopping() -> Result<(), NotifyError> {
    notify("STOPPING=1")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares with.
fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let micros = u64::try_from(t.tv_nsec).unwrap_or(0) / 1000;
    secs.saturating_mul(1_000_000).saturating_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        send(path.to_str().expect("utf-8"), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        assert!(monotonic_usec() > 0);
    }
}
