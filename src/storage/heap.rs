//! Gives the heap's free memory back to the system once a busy broker goes idle.
//!
//! SlateDB's memtables are many small allocations (a skiplist node, a key and a value per
//! entry) that are freed when a memtable is flushed. glibc keeps what they leave free in
//! the middle of its heaps for reuse, so after a burst of keyed produce the broker's RSS
//! stayed at its peak for good: 626 MB after 3M keyed records, of which `malloc_trim`
//! gave back 522 MB (docs/performance.md). A trim took 44 ms with the allocator's locks
//! held, too long to run under load, so it runs only once the process has used little CPU
//! for a whole interval (5 s) after one in which it was busy.

/// Starts the task that trims the heap when the broker goes idle after being busy. Only
/// with glibc's allocator; elsewhere it does nothing.
pub fn spawn_idle_trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(glibc::trim_when_idle());
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::time::Duration;

    /// How often the process's CPU use is looked at.
    const CHECK_INTERVAL: Duration = Duration::from_secs(5);

    /// Above this share of one core over an interval, the broker was busy: it may have
    /// freed memory since the last trim.
    const BUSY_SHARE: f64 = 0.10;

    /// Below this share of one core over an interval, the broker is idle (an idle broker
    /// uses 0.3%: SlateDB's flush tick and the retention check).
    const IDLE_SHARE: f64 = 0.02;

    pub async fn trim_when_idle() {
        let mut busy_since_trim = false;
        let mut last = process_cpu();
        let mut ticks = tokio::time::interval(CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let now = process_cpu();
            let share = now.saturating_sub(last).as_secs_f64() / CHECK_INTERVAL.as_secs_f64();
            last = now;
            if share > BUSY_SHARE {
                busy_since_trim = true;
            } else if share < IDLE_SHARE && busy_since_trim {
                busy_since_trim = false;
                let trimmed = tokio::task::spawn_blocking(|| {
                    // SAFETY: malloc_trim only walks and releases the allocator's own free
                    // memory, under its own locks; it takes no pointers of ours.
                    unsafe { libc::malloc_trim(0) }
                })
                .await;
                tracing::debug!(released = ?trimmed.map(|r| r == 1), "idle: heap trimmed");
            }
        }
    }

    /// CPU time the whole process has used so far.
    fn process_cpu() -> Duration {
        let mut spent = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `spent` is a valid timespec for the call to fill.
        let read = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut spent) };
        if read != 0 {
            return Duration::ZERO;
        }
        Duration::new(spent.tv_sec as u64, spent.tv_nsec as u32)
    }
}
