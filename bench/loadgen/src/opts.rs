//! Command-line options (`--key value` pairs, read per mode with defaults) and
//! the client-side addressing they describe: `ws://`/`wss://` target URLs and
//! the `--src-ips` source address spread.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// `--key value` pairs; every mode reads what it needs with a default.
pub struct Opts(HashMap<String, String>);

impl Opts {
    pub fn parse(args: &[String]) -> Opts {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k.trim_start_matches("--").to_string();
            let val = it.next().cloned().unwrap_or_default();
            map.insert(key, val);
        }
        Opts(map)
    }
    pub fn str(&self, key: &str, default: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }
    pub fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.0.get(key) {
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| panic!("--{key}: not a number: {v}")),
            None => default,
        }
    }
    pub fn secs(&self, key: &str, default: f64) -> Duration {
        Duration::from_secs_f64(self.num(key, default))
    }
}

/// A parsed `ws://` or `wss://` URL (IP literal hosts only: loopback benchmarks).
#[derive(Clone)]
pub struct Target {
    pub tls: bool,
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

pub fn parse_url(url: &str) -> io::Result<Target> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else {
        return Err(io::Error::other(format!(
            "url must start with ws:// or wss://: {url}"
        )));
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = hostport
        .parse()
        .map_err(|e| io::Error::other(format!("{hostport}: {e}")))?;
    Ok(Target {
        tls,
        addr,
        host: hostport.to_string(),
        path: path.to_string(),
    })
}

/// Source address of client connection `i` when spreading over `k` addresses.
pub fn source_ip(i: usize, k: usize) -> Option<Ipv4Addr> {
    if k <= 1 {
        return None;
    }
    let n = i % k;
    Some(Ipv4Addr::new(
        127,
        0,
        1 + (n / 250) as u8,
        1 + (n % 250) as u8,
    ))
}
