//! What long work reports to its caller and hears from it: progress counters and a
//! cancellation flag. The CLI implements [`Monitor`] with progress bars; a library user may
//! pass [`Silent`].

use std::sync::atomic::{AtomicBool, Ordering};

/// A progress counter over a known number of items.
pub trait Bar: Send + Sync {
    /// `n` more items are done.
    fn inc(&self, n: u64);
    /// `pos` items are done.
    fn set_position(&self, pos: u64);
    /// The work is over; the counter disappears.
    fn finish(&self);
}

/// Progress and cancellation for long work.
pub trait Monitor: Sync {
    /// Whether the caller asked the work to stop.
    fn cancelled(&self) -> bool;

    /// A counter over `len` items of `what` (e.g. "synthesising").
    fn bar(&self, len: u64, what: &str) -> Box<dyn Bar>;

    /// Fails once the caller has asked to stop: long loops call it between batches and
    /// unwind, removing their unfinished files.
    fn check_cancelled(&self) -> anyhow::Result<()> {
        if self.cancelled() {
            anyhow::bail!("interrupted; the unfinished output files were removed");
        }
        Ok(())
    }
}

/// A [`Monitor`] that shows nothing and stops when its flag is set.
#[derive(Debug, Default)]
pub struct Silent {
    cancel: AtomicBool,
}

impl Silent {
    /// A monitor that is never cancelled unless [`Silent::cancel`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the work to stop at its next batch.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
}

struct NoBar;

impl Bar for NoBar {
    fn inc(&self, _: u64) {}
    fn set_position(&self, _: u64) {}
    fn finish(&self) {}
}

impl Monitor for Silent {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    fn bar(&self, _: u64, _: &str) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
}
