//! SlateDB's one warning that is normal operation, thinned to once a minute.
//!
//! When writes not yet flushed reach `max_unflushed_bytes`, SlateDB makes appends wait for
//! its flushes and logs a warning each time it starts to (`applying backpressure`). With
//! Shale's bounds (`storage::open`) that is how a sustained keyed produce is paced: 56 such
//! lines in a 26 s run (with 96 MiB unflushed), which buried everything else in the log. The first of them is
//! still worth seeing; SlateDB's other warnings all pass.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// How its message starts (SlateDB 0.18, `db.rs`). The message alone is matched: SlateDB
/// logs through the `log` crate, whose events reach `tracing` under a target of their own.
const MESSAGE_START: &str = "unflushed WAL and memtable size exceeds max_unflushed_bytes";

/// At most one such line per this long.
const EVERY: Duration = Duration::from_secs(60);

/// A log filter that lets SlateDB's backpressure warning through at most once per
/// [`EVERY`], and everything else.
#[derive(Default)]
pub struct BackpressureWarnings {
    /// When one last went through, in ms since the epoch (0: never).
    last_ms: AtomicU64,
}

impl<S> Filter<S> for BackpressureWarnings {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    /// It passes every level, so combined with the log filter (`and`) the hint stays that
    /// filter's. Without a hint of its own the combination would have none: every `debug!`
    /// and `trace!` of SlateDB's (through the `log` crate) would be built and offered to
    /// the filters, on the produce path too.
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        if *event.metadata().level() != Level::WARN {
            return true;
        }
        let mut backpressure = IsBackpressure(false);
        event.record(&mut backpressure);
        !backpressure.0 || self.first_in_a_while(now_ms())
    }
}

impl BackpressureWarnings {
    /// True, and remembered, if none went through in the last [`EVERY`].
    fn first_in_a_while(&self, now_ms: u64) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < EVERY.as_millis() as u64 {
            return false;
        }
        self.last_ms
            .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Whether an event's message is SlateDB's backpressure warning.
struct IsBackpressure(bool);

impl Visit for IsBackpressure {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.starts_with(MESSAGE_START);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}").starts_with(MESSAGE_START);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::*;

    #[test]
    fn only_the_first_backpressure_warning_is_logged_and_others_pass() {
        let written = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = written.clone();
        let output = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .with_filter(BackpressureWarnings::default());
        let subscriber = tracing_subscriber::registry().with(output);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                tracing::warn!(
                    target: "slatedb::db",
                    "unflushed WAL and memtable size exceeds max_unflushed_bytes. applying \
                     backpressure. [total_mem_size_bytes=100 MB]"
                );
                tracing::warn!(target: "slatedb::db", "failed to shutdown compactor task");
            }
        });
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("applying backpressure").count(), 1, "{text}");
        assert_eq!(text.matches("failed to shutdown").count(), 3, "{text}");
    }

    #[test]
    fn the_log_filters_level_hint_stays() {
        use tracing_subscriber::filter::FilterExt;
        let filter = tracing_subscriber::EnvFilter::new("info,slatedb=warn")
            .and(BackpressureWarnings::default());
        let hint = <_ as Filter<tracing_subscriber::Registry>>::max_level_hint(&filter);
        assert_eq!(hint, Some(LevelFilter::INFO));
    }

    struct Writer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_warning_a_minute_goes_through() {
        let filter = BackpressureWarnings::default();
        assert!(filter.first_in_a_while(1_000_000));
        assert!(!filter.first_in_a_while(1_000_500));
        assert!(!filter.first_in_a_while(1_059_999));
        assert!(filter.first_in_a_while(1_060_000));
        assert!(!filter.first_in_a_while(1_060_001));
    }
}
