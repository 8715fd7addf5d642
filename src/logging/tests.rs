//! [`Fields`] writes what tracing-subscriber's default field writer writes; [`Every`]
//! lets one warning through a period.

use std::io;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

use super::*;

/// A writer into a shared buffer, for a subscriber's output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Captures what `f` logs through a default fmt subscriber, as text (for
/// tests elsewhere that check a log line).
pub(crate) fn logs_of(f: impl FnOnce()) -> String {
    let buf = Captured::default();
    let sub = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(buf.clone())
        .finish();
    tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    text
}

#[derive(Debug)]
struct Failure;

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("it \"failed\"")
    }
}

impl std::error::Error for Failure {}

/// Every kind of field an event can carry, in the order the default writes
/// them, and a span's fields on the same line.
fn events() {
    let ip: std::net::IpAddr = [127, 0, 0, 1].into();
    let span = tracing::info_span!("conn", peer = %ip, id = 7u64);
    let _in = span.enter();
    tracing::info!(
        target: "access",
        kind = "http",
        client = %ip,
        method = %http::Method::GET,
        path = "/a \"quoted\"\npath\\é",
        status = 200u16,
        close_code = -1i64,
        drained = false,
        ratio = 0.5f64,
        list = ?["a", "b"],
        r#type = "raw",
        empty = "",
    );
    tracing::warn!(
        error = &Failure as &(dyn std::error::Error + 'static),
        "a message with \x1b[31m escape"
    );
    tracing::info!("only a message {}", 3);
    tracing::info!(n = 1u64, "a message after a field");
}

fn output(fields: Option<Fields>, ansi: bool) -> String {
    let out = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .without_time()
        .with_ansi(ansi);
    match fields {
        Some(f) => tracing::subscriber::with_default(builder.fmt_fields(f).finish(), events),
        None => tracing::subscriber::with_default(builder.finish(), events),
    }
    let bytes = out.0.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn the_fields_are_written_as_the_default_writes_them() {
    let ours = output(Some(Fields), false);
    assert_eq!(ours, output(None, false));
    assert!(
        ours.contains(r#"kind="http" client=127.0.0.1 method=GET path="/a \"quoted\"\npath\\é" status=200 close_code=-1 drained=false ratio=0.5 list=["a", "b"] type="raw" empty="""#),
        "{ours}"
    );
    assert!(ours.contains("conn{peer=127.0.0.1 id=7}"), "{ours}");
    // Coloured output is the default writer's.
    assert_eq!(output(Some(Fields), true), output(None, true));
}

/// The clock writes what tracing-subscriber's `SystemTime` writes, read
/// between two of its readings in the same second (retried if the second
/// turned): the same shape, and a time between theirs, to the microsecond.
#[test]
fn the_clock_writes_the_default_timestamp() {
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    let stamp = |t: &dyn FormatTime| {
        let mut s = String::new();
        t.format_time(&mut Writer::new(&mut s)).unwrap();
        s
    };
    let (before, ours, after) = (0..10)
        .map(|_| (stamp(&SystemTime), stamp(&Clock), stamp(&SystemTime)))
        .find(|(a, _, c)| a[..SECOND] == c[..SECOND])
        .expect("one second within ten tries");
    assert_eq!(ours.len(), SECOND + 8, "{ours}");
    assert_eq!(ours.len(), before.len(), "{ours} / {before}");
    assert!(ours.ends_with('Z'), "{ours}");
    // The same format, so text order is time order.
    assert!(before <= ours && ours <= after, "{before} {ours} {after}");
}

/// The first event of a period warns, the rest of it do not.
#[test]
fn every_lets_one_warning_through_a_period() {
    let every = Every::secs(3600);
    assert!(every.due());
    assert!(!(0..1000).any(|_| every.due()));
}
