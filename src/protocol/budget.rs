//! Byte budgets: how much of something all connections together may hold at once.
//!
//! The broker keeps two: request bytes (Kafka's `queued.max.request.bytes`), taken before a
//! frame's body is read, and fetched record bytes, taken before a partition is read for a
//! fetch. Each share goes back once its answer is written, so the broker's memory follows
//! its configuration, not its load.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A number of bytes shared by every connection.
///
/// A share is taken as soon as that much is free, whatever else waits, as Kafka's memory
/// pool does: a connection waiting for room for a large request does not hold up the
/// heartbeats and offset commits of the others, which need little.
#[derive(Clone)]
pub struct ByteBudget {
    inner: Arc<BudgetState>,
}

struct BudgetState {
    total: usize,
    free: AtomicUsize,
    /// Signalled whenever a share (or part of one) comes back.
    returned: Notify,
    /// The flag that sets `total`, named in the log when the budget runs short.
    setting: &'static str,
    created: Instant,
    /// When the log last said so, in milliseconds after `created` (`u64::MAX`: never).
    last_reported_ms: AtomicU64,
}

/// How often, at most, the log says that a budget ran short.
const REPORT_EVERY: Duration = Duration::from_secs(60);

impl ByteBudget {
    /// A budget of `total` bytes, set by the flag `setting`.
    pub fn new(total: usize, setting: &'static str) -> Self {
        ByteBudget {
            inner: Arc::new(BudgetState {
                total,
                free: AtomicUsize::new(total),
                returned: Notify::new(),
                setting,
                created: Instant::now(),
                last_reported_ms: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// Waits until `bytes` are free and takes them. More than the whole budget takes all
    /// of it, so such a request is served alone rather than never.
    pub async fn take(&self, bytes: usize) -> Share {
        let bytes = bytes.min(self.inner.total);
        loop {
            // Listening before trying, so a share returned in between is not missed.
            let returned = self.inner.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(share) = self.try_take(bytes, bytes) {
                return share;
            }
            returned.await;
        }
    }

    /// Takes `wanted` bytes, or as many as are free if that is at least `least`, without
    /// waiting; `None` if fewer than `least` are free.
    pub fn try_take(&self, wanted: usize, least: usize) -> Option<Share> {
        let wanted = wanted.min(self.inner.total);
        let least = least.min(wanted);
        let mut bytes = 0;
        let taken = self
            .inner
            .free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |free| {
                bytes = free.min(wanted);
                (free >= least).then(|| free - bytes)
            });
        if taken.is_err() {
            self.inner.report_short();
            return None;
        }
        Some(Share {
            budget: self.inner.clone(),
            bytes,
        })
    }

    /// Resolves once some share comes back: for a caller that could not take what it needed
    /// and waits on other things too. Listen before trying, so nothing is missed.
    pub fn returned(&self) -> tokio::sync::futures::Notified<'_> {
        self.inner.returned.notified()
    }

    pub fn free(&self) -> usize {
        self.inner.free.load(Ordering::Acquire)
    }
}

/// A part of a budget, given back when dropped.
pub struct Share {
    budget: Arc<BudgetState>,
    bytes: usize,
}

impl Share {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back all but `bytes` (what turned out to be needed).
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

impl BudgetState {
    /// Says in the log, at most once every [`REPORT_EVERY`], that clients wait for this
    /// budget: the cause of clients slowing down, and the setting that moves it.
    fn report_short(&self) {
        let now = self.created.elapsed().as_millis() as u64;
        let last = self.last_reported_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now >= last + REPORT_EVERY.as_millis() as u64;
        if due
            && self
                .last_reported_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(
                total = self.total,
                "{} is spent: clients wait until answers give some back",
                self.setting
            );
        }
    }

    fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.free.fetch_add(bytes, Ordering::AcqRel);
            self.returned.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_come_back_when_dropped_or_shrunk() {
        let budget = ByteBudget::new(100, "test");
        let mut share = budget.take(60).await;
        assert_eq!(budget.free(), 40);
        share.shrink_to(10);
        assert_eq!((share.bytes(), budget.free()), (10, 90));
        drop(share);
        assert_eq!(budget.free(), 100);
        // More than the whole budget takes all of it.
        assert_eq!(budget.take(500).await.bytes(), 100);
    }

    #[tokio::test]
    async fn try_take_takes_what_is_free_down_to_the_least_wanted() {
        let budget = ByteBudget::new(100, "test");
        let held = budget.take(70).await;
        assert_eq!(budget.try_take(50, 20).map(|s| s.bytes()), Some(30));
        assert!(budget.try_take(50, 40).is_none());
        let all = budget.try_take(30, 30).unwrap();
        assert_eq!(budget.free(), 0);
        let returned = budget.returned();
        tokio::pin!(returned);
        returned.as_mut().enable();
        drop(all);
        returned.await;
        drop(held);
        assert_eq!(budget.free(), 100);
    }

    #[tokio::test]
    async fn a_small_share_is_not_held_up_by_a_large_one_waiting() {
        let budget = ByteBudget::new(100, "test");
        let held = budget.take(60).await;
        let waiting = budget.take(50);
        tokio::pin!(waiting);
        let timeout = tokio::time::timeout(std::time::Duration::from_millis(20), &mut waiting);
        assert!(timeout.await.is_err());
        assert_eq!(budget.take(30).await.bytes(), 30);
        drop(held);
        assert_eq!(waiting.await.bytes(), 50);
    }
}
