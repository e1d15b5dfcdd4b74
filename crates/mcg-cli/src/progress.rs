//! What a long command reports to and hears from its user: progress bars with ETA on stderr
//! (hidden with `--quiet` or when stderr is not a terminal), and the cancellation flag that the
//! interrupt handler sets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
pub use mcg_dataset::monitor::{Bar, Monitor};

/// Progress bars for long work, and the invocation's cancellation flag (owned here, set by
/// [`crate::util::install_interrupt_handler`], read by long loops between batches).
#[derive(Debug, Clone)]
pub struct Progress {
    quiet: bool,
    cancel: Arc<AtomicBool>,
}

impl Progress {
    pub fn new(quiet: bool, cancel: Arc<AtomicBool>) -> Self {
        Self { quiet, cancel }
    }

    /// The cancellation flag, for libraries that take one (the trainer).
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }

    /// A bar over `len` items of `unit` (e.g. "images"), showing rate and ETA.
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let target = if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(len), target);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:40}] {human_pos}/{human_len} ({per_sec}, ETA {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }
}

/// The libraries' view of a command's progress: its bars and its cancellation flag.
impl Monitor for Progress {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    fn bar(&self, len: u64, what: &str) -> Box<dyn Bar> {
        Box::new(Shown(Progress::bar(self, len, what)))
    }
}

/// An indicatif bar, counting for the libraries.
struct Shown(ProgressBar);

impl Bar for Shown {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    fn set_position(&self, pos: u64) {
        self.0.set_position(pos);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
