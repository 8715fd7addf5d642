//! The accept loop every server mode runs (`--listen`, default
//! 127.0.0.1:19001): TCP_NODELAY on each connection, one task per connection,
//! and accept errors (EMFILE and friends) backed off, never fatal.

use std::io;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::opts::Opts;

/// Accepts on `--listen` forever, running `handler` on each connection.
pub async fn serve<F, Fut>(opts: &Opts, handler: F) -> io::Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(opts.str("listen", "127.0.0.1:19001")).await?;
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(handler(s));
            }
            Err(e) => {
                // EMFILE and friends: back off, never stop serving.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
