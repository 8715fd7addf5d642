//! The real `wsgate` binary as a child process (upgrades, systemd): its
//! stderr lines collected by a thread, waits with deadlines, signals by pid,
//! and every process it started or that took over from it killed on drop.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `wsgate` process (or a shell that execs it) and its log.
pub struct WsgateProc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    /// Processes that took over from `child` (binary upgrades), killed on drop.
    pub successors: Vec<u32>,
}

impl WsgateProc {
    /// `wsgate -c CONFIG`.
    pub fn start(config: &std::path::Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
        cmd.arg("-c").arg(config).stdout(Stdio::null());
        Self::spawn(cmd)
    }

    /// Runs `cmd` with `RUST_LOG=info` and its stderr collected (stdin and
    /// stdout as `cmd` sets them).
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
            successors: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing `needle` (already seen ones count).
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?} within {limit:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Takes in the log lines written so far without waiting.
    pub fn collect(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// Waits until the child exits; `None` when `limit` passes first.
    pub async fn exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `sig` (`TERM`, `HUP`, `USR2`...) to the child.
    pub fn signal(&self, sig: &str) {
        signal(self.pid(), sig);
    }
}

/// `kill -SIG pid`.
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(ok.success(), "kill -{sig} {pid}");
}

impl Drop for WsgateProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &self.successors {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}
