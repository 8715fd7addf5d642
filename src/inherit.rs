//! Listening sockets this process was handed instead of binding them: by the
//! process it replaces in a binary upgrade (`WSGATE_INHERITED_FDS`, see
//! `upgrade`) or by systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`,
//! fds from 3). They are taken once at start, matched to the config by the
//! address they are bound to (`getsockname`, so a name in the variable is only
//! a label), and whichever the config does not use is closed.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The variable a binary upgrade passes: `ADDR=FD,ADDR=FD,...`.
pub const INHERITED_FDS: &str = "WSGATE_INHERITED_FDS";
/// systemd's first passed descriptor (`SD_LISTEN_FDS_START`).
const SD_LISTEN_FDS_START: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error("{var}: \"{value}\" is not a list of ADDR=FD")]
    Malformed { var: &'static str, value: String },
    #[error("LISTEN_FDS: \"{0}\" is not a number")]
    ListenFds(String),
    #[error("inherited fd {fd}: not a listening TCP socket: {source}")]
    NotASocket { fd: RawFd, source: std::io::Error },
    #[error("inherited fd {fd}: not a listening TCP socket ({why})")]
    NotListening { fd: RawFd, why: &'static str },
    #[error("inherited fd {fd}: {source}")]
    Flags { fd: RawFd, source: std::io::Error },
}

/// Sockets handed to this process, by the address they are bound to.
#[derive(Default)]
pub struct Inherited {
    sockets: HashMap<SocketAddr, TcpListener>,
}

impl Inherited {
    /// Takes the sockets named by the environment (an upgrade's
    /// `WSGATE_INHERITED_FDS`, systemd's `LISTEN_FDS` when `LISTEN_PID` is this
    /// process) and removes those variables, so nothing started later
    /// believes they are its own. Call once, before any other thread runs
    /// (it edits the environment). Problems come back as warnings: a bad
    /// variable means binding as usual.
    pub fn from_env() -> (Self, Vec<InheritError>) {
        let mut fds = Vec::new();
        let mut errors = Vec::new();
        if let Ok(v) = std::env::var(INHERITED_FDS) {
            match parse_inherited(&v) {
                Ok(f) => fds.extend(f),
                Err(e) => errors.push(e),
            }
        }
        match systemd_fds() {
            Ok(f) => fds.extend(f),
            Err(e) => errors.push(e),
        }
        for var in [INHERITED_FDS, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            std::env::remove_var(var);
        }
        let mut me = Self::default();
        for fd in fds {
            match adopt(fd) {
                Ok((addr, l)) => {
                    me.sockets.insert(addr, l);
                }
                Err(e) => errors.push(e),
            }
        }
        (me, errors)
    }

    /// The inherited socket bound to `addr`, if any (then it is no longer
    /// held here).
    pub fn take(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        self.sockets.remove(&addr)
    }

    /// Closes every socket nobody took, returning their addresses.
    pub fn close_unused(&mut self) -> Vec<SocketAddr> {
        self.sockets.drain().map(|(a, _)| a).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

/// `ADDR=FD,...` (the address is a label; `FD` alone is accepted too).
fn parse_inherited(v: &str) -> Result<Vec<RawFd>, InheritError> {
    v.split(',')
        .filter(|e| !e.is_empty())
        .map(|e| {
            let fd = e.rsplit('=').next().unwrap_or(e);
            fd.trim().parse::<RawFd>().ok().filter(|fd| *fd > 2)
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| InheritError::Malformed {
            var: INHERITED_FDS,
            value: v.to_string(),
        })
}

/// systemd socket activation: `LISTEN_FDS` descriptors from 3, for us only
/// when `LISTEN_PID` is our pid (the variables leak to children otherwise).
fn systemd_fds() -> Result<Vec<RawFd>, InheritError> {
    let Ok(pid) = std::env::var("LISTEN_PID") else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    let n = std::env::var("LISTEN_FDS").unwrap_or_default();
    let count: RawFd = n.trim().parse().map_err(|_| InheritError::ListenFds(n))?;
    Ok((SD_LISTEN_FDS_START..SD_LISTEN_FDS_START.saturating_add(count)).collect())
}

/// Owns `fd` as a listening socket: close-on-exec again (it was cleared for
/// us), non-blocking (tokio), and its bound address.
fn adopt(fd: RawFd) -> Result<(SocketAddr, TcpListener), InheritError> {
    // Checked before taking ownership: a number that is not an open
    // descriptor must not be closed later as if it were ours.
    let borrowed = borrow_open(fd).ok_or_else(|| InheritError::NotASocket {
        fd,
        source: std::io::Error::from_raw_os_error(9),
    })?;
    // A UDP socket, or a TCP one nobody called listen() on, has an address
    // too: taken, the first was a listener that served nothing while
    // /readyz said ready, the second failed every accept ten times a second.
    if let Some(why) = not_listening(borrowed) {
        // Ours to close (as `adopt` takes the others): left open, it would
        // keep its port and pass on to an upgrade's new process.
        // SAFETY: as below; open, handed to this process, taken once.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        return Err(InheritError::NotListening { fd, why });
    }
    rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC).map_err(|e| {
        InheritError::Flags {
            fd,
            source: e.into(),
        }
    })?;
    // SAFETY: `fd` is open (checked above), was handed to this process by the
    // one that started it (the variables above say so), and is taken exactly
    // once: `from_env` runs once at start, before anything else opens files,
    // so no other owner of this number exists.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let l = TcpListener::from(owned);
    let addr = l
        .local_addr()
        .map_err(|source| InheritError::NotASocket { fd, source })?;
    l.set_nonblocking(true)
        .map_err(|source| InheritError::Flags { fd, source })?;
    Ok((addr, l))
}

/// Why `fd` is no listening stream socket, if it is not.
fn not_listening(fd: std::os::fd::BorrowedFd<'_>) -> Option<&'static str> {
    use rustix::net::{sockopt, SocketType};
    match sockopt::socket_type(fd) {
        Err(_) => Some("not a socket"),
        Ok(t) if t != SocketType::STREAM => Some("not a stream socket"),
        Ok(_) => match sockopt::socket_acceptconn(fd) {
            Ok(true) => None,
            _ => Some("not listening"),
        },
    }
}

/// `fd` borrowed if it is an open descriptor.
fn borrow_open(fd: RawFd) -> Option<std::os::fd::BorrowedFd<'static>> {
    // SAFETY: the borrow is only used for `fcntl` right away, after
    // `F_GETFD` on the raw number showed the descriptor is open; it is not
    // closed in between (nothing else runs yet, see `adopt`).
    let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(b).ok().map(|_| b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_lists_take_the_fd_after_the_last_equals_sign() {
        assert_eq!(
            parse_inherited("127.0.0.1:80=3,[::1]:443=4").unwrap(),
            [3, 4]
        );
        assert_eq!(parse_inherited("5").unwrap(), [5]);
        assert!(parse_inherited("a=b").is_err());
        assert!(parse_inherited("x=1").is_err(), "stdio is never a listener");
    }

    /// Only a listening stream socket is taken: a UDP socket or a bound TCP
    /// socket without listen() has an address too.
    #[test]
    fn only_listening_stream_sockets_are_taken() {
        use std::os::fd::AsFd;
        let listening = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        assert_eq!(not_listening(listening.as_fd()), None);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert_eq!(not_listening(udp.as_fd()), Some("not a stream socket"));
        let bound = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
        .expect("socket");
        rustix::net::bind(&bound, &"127.0.0.1:0".parse::<SocketAddr>().expect("addr"))
            .expect("bind");
        assert_eq!(not_listening(bound.as_fd()), Some("not listening"));
        let file = tempfile::tempfile().expect("file");
        assert_eq!(not_listening(file.as_fd()), Some("not a socket"));
    }
}
