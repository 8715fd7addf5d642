//! `SIGUSR2` binary upgrade, like nginx: the running process starts the
//! binary at its own path with the same arguments and hands it its listening
//! sockets as inherited descriptors (`WSGATE_INHERITED_FDS=ADDR=FD,...`, read
//! by `inherit`). The new process serves on them at once (both processes
//! accept from the same kernel queues, so no connection is refused) and
//! writes `ready` to a socket it was given (`WSGATE_UPGRADE_READY_FD`); only
//! then does the old process stop accepting and drain. A new process that
//! exits, or is not ready within [`READY_TIMEOUT`], is killed if still there,
//! and the old one keeps serving.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::inherit::INHERITED_FDS;

/// How long the new process has to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The variable naming the descriptor the new process reports ready on.
const READY_FD: &str = "WSGATE_UPGRADE_READY_FD";
/// The pid of the process that set [`READY_FD`]: a process that inherited
/// the variable from anyone else ignores it.
const PARENT: &str = "WSGATE_UPGRADE_PARENT";
/// What the new process writes when its listeners serve.
const READY: &[u8] = b"ready\n";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot find this binary's path (/proc/self/exe): {0}")]
    Exe(std::io::Error),
    #[error("cannot make the ready socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot start {exe}: {source}")]
    Spawn { exe: String, source: std::io::Error },
    #[error("the new process (pid {pid}) exited before it was ready ({status}); its log says why")]
    Exited { pid: u32, status: String },
    #[error("the new process (pid {pid}) was not ready within {secs} s; killed it")]
    NotReady { pid: u32, secs: u64 },
    #[error("reading the new process's ready socket: {0}")]
    Read(std::io::Error),
}

/// The binary and arguments to start, captured at start: a file replaced at
/// that path later is what the upgrade runs.
#[derive(Clone)]
pub struct Upgrader {
    exe: PathBuf,
    args: Vec<OsString>,
}

impl Upgrader {
    pub fn capture() -> Result<Self, UpgradeError> {
        let exe = std::fs::read_link("/proc/self/exe").map_err(UpgradeError::Exe)?;
        // A running binary whose file was replaced reads as "PATH (deleted)".
        let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(p) => PathBuf::from(p),
            None => exe,
        };
        Ok(Self {
            exe,
            args: std::env::args_os().skip(1).collect(),
        })
    }

    /// Starts the new process with `sockets` and waits until it reports
    /// ready (its pid), exits, or [`READY_TIMEOUT`] passes.
    pub async fn run(&self, sockets: Vec<(SocketAddr, OwnedFd)>) -> Result<u32, UpgradeError> {
        self.run_within(sockets, READY_TIMEOUT).await
    }

    async fn run_within(
        &self,
        sockets: Vec<(SocketAddr, OwnedFd)>,
        limit: Duration,
    ) -> Result<u32, UpgradeError> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(UpgradeError::Socket)?;
        // Killed if this future is dropped first (the old process stopping
        // with SIGTERM while the new one is not ready): it would otherwise
        // hold the listening sockets, accepting connections nobody serves.
        let mut pending = Pending(Some(self.spawn(&sockets, &theirs)?));
        let Some(child) = pending.0.as_mut() else {
            return Err(UpgradeError::NotReady { pid: 0, secs: 0 });
        };
        // Only the child holds its end now: EOF means it is gone.
        drop(theirs);
        drop(sockets);
        let pid = child.id().unwrap_or(0);
        ours.set_nonblocking(true).map_err(UpgradeError::Socket)?;
        let mut ours = tokio::net::UnixStream::from_std(ours).map_err(UpgradeError::Socket)?;
        let mut buf = [0u8; READY.len()];
        let outcome = tokio::select! {
            r = ours.read_exact(&mut buf) => match r {
                Ok(_) if buf == READY => {
                    // Serving now: let go of it unharmed.
                    drop(pending.0.take());
                    return Ok(pid);
                }
                Ok(_) | Err(_) => None,
            },
            s = child.wait() => Some(s),
            () = tokio::time::sleep(limit) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(UpgradeError::NotReady { pid, secs: limit.as_secs() });
            }
        };
        // The ready socket closed without `ready`: the process is exiting.
        let status = match outcome {
            Some(s) => s,
            None => match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    return Err(UpgradeError::NotReady {
                        pid,
                        secs: limit.as_secs(),
                    });
                }
            },
        };
        Err(UpgradeError::Exited {
            pid,
            status: status.map_or_else(|e| e.to_string(), describe),
        })
    }

    fn spawn(
        &self,
        sockets: &[(SocketAddr, OwnedFd)],
        ready: &std::os::unix::net::UnixStream,
    ) -> Result<tokio::process::Child, UpgradeError> {
        let list: Vec<String> = sockets
            .iter()
            .map(|(a, fd)| format!("{a}={}", fd.as_raw_fd()))
            .collect();
        let mut pass: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        pass.push(ready.as_raw_fd());
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.args(&self.args)
            .env(INHERITED_FDS, list.join(","))
            .env(READY_FD, ready.as_raw_fd().to_string())
            .env(PARENT, std::process::id().to_string())
            // systemd's sockets are passed on like ours, by number.
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        // SAFETY: runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: `fcntl(F_SETFD)` is one (a raw
        // syscall in rustix, no allocation, no locks). The descriptors are
        // open: the parent holds them (`sockets`, `ready`) until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &pass {
                    let fd = std::os::fd::BorrowedFd::borrow_raw(*fd);
                    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
                }
                Ok(())
            });
        }
        tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|source| UpgradeError::Spawn {
                exe: self.exe.display().to_string(),
                source,
            })
    }
}

/// A new process not yet ready, killed when dropped unless taken.
struct Pending(Option<tokio::process::Child>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.start_kill();
        }
    }
}

fn describe(s: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// The new process's end of the ready socket, when it was started by an
/// upgrade.
pub struct ReadyReport(OwnedFd);

impl ReadyReport {
    /// Takes the ready descriptor from the environment (and removes the
    /// variables). Call once, before any other thread runs.
    pub fn from_env() -> Option<Self> {
        let fd = std::env::var(READY_FD).ok();
        let parent = std::env::var(PARENT).ok();
        std::env::remove_var(READY_FD);
        std::env::remove_var(PARENT);
        let ours =
            parent.and_then(|p| p.parse::<u32>().ok()) == Some(std::os::unix::process::parent_id());
        let fd: RawFd = fd?.parse().ok().filter(|fd| *fd > 2 && ours)?;
        // SAFETY: `fd` is checked to be open, and it was passed to this process
        // by its parent (PARENT is our parent's pid) for exactly this; taken once
        // at start, before anything else opens files.
        let open = rustix::io::fcntl_getfd(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) });
        open.ok()?;
        // SAFETY: as above; from here this `OwnedFd` is its only owner.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let _ = rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC);
        Some(Self(owned))
    }

    /// Tells the old process this one serves (it then drains).
    pub fn send(self) -> std::io::Result<()> {
        let mut s = std::os::unix::net::UnixStream::from(self.0);
        s.write_all(READY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary that exits at once: the upgrade fails with its status and
    /// nothing waits for the timeout.
    #[tokio::test]
    async fn a_new_process_that_exits_is_reported() {
        let up = Upgrader {
            exe: "/bin/sh".into(),
            args: vec!["-c".into(), "exit 3".into()],
        };
        let e = up
            .run_within(Vec::new(), Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, UpgradeError::Exited { .. }), "{e}");
        assert!(e.to_string().contains("exit status 3"), "{e}");
    }

    #[tokio::test]
    async fn a_new_process_that_never_reports_is_killed() {
        let up = Upgrader {
            exe: "/bin/sh".into(),
            args: vec!["-c".into(), "exec sleep 30".into()],
        };
        let e = up
            .run_within(Vec::new(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, UpgradeError::NotReady { .. }), "{e}");
    }

    /// The ready descriptor survives exec: a shell writes `ready` to it.
    #[tokio::test]
    async fn a_new_process_reports_ready_on_the_passed_descriptor() {
        // bash: dash redirects only single-digit descriptors.
        let up = Upgrader {
            exe: "/bin/bash".into(),
            args: vec![
                "-c".into(),
                "echo ready >&$WSGATE_UPGRADE_READY_FD; exec sleep 1".into(),
            ],
        };
        let pid = up
            .run_within(Vec::new(), Duration::from_secs(10))
            .await
            .expect("ready");
        assert!(pid > 0);
    }
}
