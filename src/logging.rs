//! Log setup: `RUST_LOG` filters (default `info`), text or JSON lines, and the
//! text format's field writer and clock.
//!
//! Why a field writer of our own: every request's access line has fourteen
//! fields, and tracing-subscriber's default writer paints each name and `=`
//! through `nu_ansi_term` even with colours off (an empty style still goes
//! through the formatting machinery) and writes each field by a three-part
//! `write!`: 18 k instructions per access line, as much as proxying the
//! request (callgrind, `VARIANT=logged bench/callgrind.sh S4`). [`Fields`]
//! writes the same bytes directly when colours are off, and leaves the
//! message, errors and coloured output to the default writer. [`Clock`] does
//! the same for the timestamp.

use std::fmt;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// At most one warning per period, for events one peer can repeat at will
/// (a misconfigured balancer's refused PROXY headers, a publisher's bad
/// cluster envelopes): the rest go to debug. Lock-free; a static.
pub struct Every {
    secs: u64,
    /// When the last warning went out, in seconds since the epoch.
    last: std::sync::atomic::AtomicU64,
}

impl Every {
    pub const fn secs(secs: u64) -> Self {
        Self {
            secs,
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether a warning may go out now (and the period starts again).
    pub fn due(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last.load(Relaxed);
        now >= last + self.secs
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls are
/// ignored), which tests rely on.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file or a
        // collector would otherwise get escape codes in every line.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.fmt_fields(Fields).with_timer(Clock).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// The text format's timestamps, as tracing-subscriber's `SystemTime` writes
/// them (RFC 3339, microseconds, UTC: `2026-12-04T21:40:11.309126Z`), for
/// about 300 instructions a line instead of 2 200: the date and time of day
/// are what its formatter wrote for the current second, kept per thread, and
/// only the fraction is written per line.
#[derive(Debug, Default, Clone, Copy)]
pub struct Clock;

/// `YYYY-MM-DDTHH:MM:SS`, the part of a timestamp that changes once a second.
const SECOND: usize = 19;

thread_local! {
    static THIS_SECOND: std::cell::Cell<(u64, [u8; SECOND])> =
        const { std::cell::Cell::new((u64::MAX, [0; SECOND])) };
}

impl tracing_subscriber::fmt::time::FormatTime for Clock {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) else {
            return tracing_subscriber::fmt::time::SystemTime.format_time(w);
        };
        let (cached, mut prefix) = THIS_SECOND.get();
        if cached != now.as_secs() {
            match second_prefix(now.as_secs()) {
                Some(p) => {
                    prefix = p;
                    THIS_SECOND.set((now.as_secs(), p));
                }
                None => return tracing_subscriber::fmt::time::SystemTime.format_time(w),
            }
        }
        let mut line = [0u8; SECOND + 8];
        line[..SECOND].copy_from_slice(&prefix);
        line[SECOND] = b'.';
        let mut micros = now.subsec_micros();
        for digit in line[SECOND + 1..SECOND + 7].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        line[SECOND + 7] = b'Z';
        // ASCII by construction (digits, and what the formatter wrote).
        w.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
    }
}

/// The formatter's own `YYYY-MM-DDTHH:MM:SS` for the second `secs`. It reads
/// the clock itself: `None` if the second turned meanwhile (that one line is
/// then written by the formatter in full, and the next one fills the cache).
fn second_prefix(secs: u64) -> Option<[u8; SECOND]> {
    use tracing_subscriber::fmt::time::FormatTime;
    let mut s = String::with_capacity(32);
    tracing_subscriber::fmt::time::SystemTime
        .format_time(&mut Writer::new(&mut s))
        .ok()?;
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    if after != secs {
        return None;
    }
    s.as_bytes().get(..SECOND)?.try_into().ok()
}

/// The text format's fields, `name=value` separated by spaces, byte for byte
/// as tracing-subscriber's `DefaultFields` writes them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fields;

impl<'a> MakeVisitor<Writer<'a>> for Fields {
    type Visitor = FieldWriter<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> FieldWriter<'a> {
        FieldWriter {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's or span's fields (see [`Fields`]).
pub struct FieldWriter<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

/// Who writes a field.
enum Handling {
    /// Written here.
    Plain,
    /// To the default writer: the message (escaped against terminal
    /// injection), `r#` names, errors, anything coloured.
    Default,
    /// `log.` metadata of a `log` record, which the default writer skips.
    Skip,
}

impl FieldWriter<'_> {
    fn handling(&self, field: &Field) -> Handling {
        let name = field.name();
        if name.starts_with("log.") {
            Handling::Skip
        } else if self.writer.has_ansi_escapes() || name == "message" || name.starts_with("r#") {
            Handling::Default
        } else {
            Handling::Plain
        }
    }

    fn by_default(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut v = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut v);
        self.result = v.finish();
        self.is_empty = false;
    }

    /// Writes ` name=` (no space before the first field), then the value.
    fn plain(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let w = &mut self.writer;
        let pad = if std::mem::replace(&mut self.is_empty, false) {
            ""
        } else {
            " "
        };
        self.result = w
            .write_str(pad)
            .and_then(|()| w.write_str(field.name()))
            .and_then(|()| w.write_char('='))
            .and_then(|()| value(w));
    }

    fn record(
        &mut self,
        field: &Field,
        plain: impl FnOnce(&mut Writer<'_>) -> fmt::Result,
        default: impl FnOnce(&mut DefaultVisitor<'_>),
    ) {
        match self.handling(field) {
            Handling::Plain => self.plain(field, plain),
            Handling::Default => self.by_default(default),
            Handling::Skip => {}
        }
    }
}

/// What `{:?}` of a `str` writes, without the formatting machinery when
/// nothing needs escaping (printable ASCII other than `"` and `\`).
fn quoted(w: &mut Writer<'_>, s: &str) -> fmt::Result {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        w.write_char('"')?;
        w.write_str(s)?;
        w.write_char('"')
    } else {
        write!(w, "{s:?}")
    }
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, |w| quoted(w, value), |v| v.record_str(field, value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let plain = |w: &mut Writer<'_>| w.write_str(itoa::Buffer::new().format(value));
        self.record(field, plain, |v| v.record_u64(field, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let plain = |w: &mut Writer<'_>| w.write_str(itoa::Buffer::new().format(value));
        self.record(field, plain, |v| v.record_i64(field, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        let plain = |w: &mut Writer<'_>| w.write_str(if value { "true" } else { "false" });
        self.record(field, plain, |v| v.record_bool(field, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !matches!(self.handling(field), Handling::Skip) {
            self.by_default(|v| v.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record(
            field,
            |w| write!(w, "{value:?}"),
            |v| v.record_debug(field, value),
        );
    }
}

impl VisitOutput<fmt::Result> for FieldWriter<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for FieldWriter<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
pub(crate) mod tests;
