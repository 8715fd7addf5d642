//! The Redis side of `chat-nodes`: one-shot RESP inline commands, and the
//! CPU time and `INFO commandstats` of a Redis shard.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::frame::find;

/// One RESP inline command to a Redis at `addr`; returns the reply's text
/// (a bulk string's contents, or a status line).
pub async fn redis_cmd(addr: &str, cmd: &str) -> io::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::other(format!("redis {addr}: connect timed out")))??;
    s.write_all(format!("{cmd}\r\n").as_bytes()).await?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(nl) = find(&buf, b"\r\n") {
            match buf[0] {
                b'+' => return Ok(String::from_utf8_lossy(&buf[1..nl]).into_owned()),
                b'$' => {
                    let n: usize = std::str::from_utf8(&buf[1..nl])
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| io::Error::other("redis: bad bulk length"))?;
                    if buf.len() >= nl + 2 + n {
                        return Ok(String::from_utf8_lossy(&buf[nl + 2..nl + 2 + n]).into_owned());
                    }
                }
                _ => {
                    let line = String::from_utf8_lossy(&buf[..nl]).into_owned();
                    return Err(io::Error::other(format!("redis {addr} {cmd}: {line}")));
                }
            }
        }
        match timeout_at(until, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Err(io::Error::other(format!("redis {addr}: closed"))),
            Ok(r) => {
                r?;
            }
            Err(_) => return Err(io::Error::other(format!("redis {addr} {cmd}: timed out"))),
        }
    }
}

/// used_cpu_sys + used_cpu_user of a Redis, in microseconds (`INFO cpu`).
pub async fn redis_cpu_us(addr: &str) -> io::Result<f64> {
    let info = redis_cmd(addr, "INFO cpu").await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((field("used_cpu_sys:") + field("used_cpu_user:")) * 1e6)
}

/// `INFO commandstats` as JSON: `{"evalsha":[calls,usec],...}`.
pub async fn redis_commandstats(addr: &str) -> io::Result<String> {
    let info = redis_cmd(addr, "INFO commandstats").await?;
    let mut out = Vec::new();
    for l in info.lines() {
        // cmdstat_evalsha:calls=30,usec=1500,usec_per_call=50.00,...
        let Some((name, rest)) = l.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
            continue;
        };
        let get = |k: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(k))
                .unwrap_or("0")
                .to_string()
        };
        out.push(format!(
            "\"{}\":[{},{}]",
            name.replace('|', "_"),
            get("calls="),
            get("usec=")
        ));
    }
    Ok(format!("{{{}}}", out.join(",")))
}
