//! Logging, error printing, the interrupt handler, the closed-pipe exit and the flags and
//! parsers several commands share.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

pub use mcg_dataset::guard::{refuse_writing_over_inputs, stacks_of};
pub use mcg_dataset::hint::{HINT_PREFIX, Hint, WithHint};
pub use mcg_fsio::budget::peak_rss_mib;

/// Logs to stderr; `-v` raises the level, `RUST_LOG` overrides, `--quiet` keeps errors only.
pub fn init_logging(verbose: u8, quiet: bool) {
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(
            std::env::var_os("NO_COLOR").is_none()
                && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        )
        .with_target(false)
        .without_time()
        .init();
}

/// Prints an error and its causes; an error carrying a [`Hint`] ends with a `hint:` line.
pub fn print_error(e: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    let mut messages = e
        .chain()
        .map(|c| c.to_string())
        .filter(|m| !m.starts_with(HINT_PREFIX));
    // A source error is often repeated inside its parent's message; print each text once.
    let mut printed: Vec<String> = Vec::new();
    if let Some(first) = messages.next() {
        let _ = writeln!(stderr, "error: {first}");
        printed.push(first);
    }
    for cause in messages {
        if !printed.iter().any(|p| p.contains(&cause)) {
            let _ = writeln!(stderr, "  caused by: {cause}");
        }
        printed.push(cause);
    }
    if let Some(hint) = e.downcast_ref::<Hint>() {
        let _ = writeln!(stderr, "{hint}");
    }
}

/// Sets the number of worker threads of the CPU work (rayon's global pool); `None` keeps one
/// per core.
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(t) = threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .context("setting the thread count")?;
    }
    Ok(())
}

/// Prints JSON to stdout.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// The exit status of a command whose output pipe was closed by its reader (as a Unix tool
/// killed by SIGPIPE reports it to the shell: 128 + 13).
pub const CLOSED_PIPE_STATUS: u8 = 141;

/// A closed output pipe (`multicryogan info … | head -1`) ends the program quietly, as it does
/// other Unix tools: `println!` panics when stdout's reader has gone, and this panic hook exits
/// with [`CLOSED_PIPE_STATUS`] instead of printing a panic and a stack trace. Other panics keep
/// the default hook.
pub fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if is_closed_pipe_message(message) {
            std::process::exit(i32::from(CLOSED_PIPE_STATUS));
        }
        default(info)
    }));
}

/// Whether a panic's message is the standard library's for a closed stdout or stderr.
fn is_closed_pipe_message(message: &str) -> bool {
    message.starts_with("failed printing to std") && message.contains("Broken pipe")
}

/// Whether an error comes from writing to a closed pipe (e.g. [`print_json`] into `head`).
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    let broken = Some(std::io::ErrorKind::BrokenPipe);
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(|io| io.kind()) == broken
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|json| json.io_error_kind())
                == broken
    })
}

/// The exit status of a command stopped by an interrupt (Ctrl-C, SIGTERM or SIGHUP).
pub const INTERRUPTED_STATUS: u8 = 130;

/// On the first interrupt — Ctrl-C (SIGINT), or SIGTERM or SIGHUP as `timeout`, cluster
/// schedulers and a closed terminal send — sets `cancel`, the invocation's flag (held by its
/// [`crate::progress::Progress`]): long loops stop at their next batch and unwind, removing
/// their unfinished temporary files (`train` saves its checkpoint), and the command exits with
/// [`INTERRUPTED_STATUS`]. A second interrupt exits at once.
pub fn install_interrupt_handler(cancel: Arc<AtomicBool>) {
    let result = ctrlc::set_handler(move || {
        if cancel.swap(true, Ordering::SeqCst) {
            std::process::exit(INTERRUPTED_STATUS as i32);
        }
        eprintln!("\ninterrupted: stopping after the current batch (interrupt again to quit now)");
    });
    if let Err(e) = result {
        tracing::debug!("no interrupt handler: {e}");
    }
}

/// The parser of every floating-point option: a number, refused when it is NaN or infinite
/// (which would otherwise run through a whole command and give NaN images, maps or losses).
pub fn finite_f64(text: &str) -> std::result::Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(v) => Err(format!("{v} is not a finite number")),
        Err(e) => Err(format!("{text:?} is not a number ({e})")),
    }
}

/// Parses a defocus range `MIN:MAX` in µm (or one value), as `--defocus-um` takes it.
pub fn parse_defocus_range(text: &str) -> anyhow::Result<(f64, f64)> {
    let parse = |s: &str| s.trim().parse::<f64>();
    let (lo, hi) = match text.split_once(':') {
        Some((a, b)) => (parse(a), parse(b)),
        None => (parse(text), parse(text)),
    };
    match (lo, hi) {
        (Ok(lo), Ok(hi)) if lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi => {
            Ok((lo, hi))
        }
        _ => anyhow::bail!(
            "--defocus-um {text:?}: expected MIN:MAX in µm with 0 ≤ MIN ≤ MAX, e.g. 1.0:2.0"
        ),
    }
}

/// The flags of randomly drawn imaging parameters (`project` without `--star`, and `synth`).
#[derive(Debug, Clone, clap::Args)]
pub struct ImagingArgs {
    /// Defocus range (µm, uniform, no astigmatism) of random parameters: MIN:MAX.
    #[arg(long, default_value = "1.0:2.0", value_name = "MIN:MAX")]
    pub defocus_um: String,
    /// Acceleration voltage (kV) of random parameters.
    #[arg(long, default_value_t = 300.0, value_parser = crate::util::finite_f64)]
    pub voltage: f64,
    /// Spherical aberration (mm) of random parameters.
    #[arg(long, default_value_t = 2.7, value_parser = crate::util::finite_f64)]
    pub cs: f64,
    /// Amplitude contrast of random parameters.
    #[arg(long, default_value_t = 0.1, value_parser = crate::util::finite_f64)]
    pub amp_contrast: f64,
    /// Largest shift (Å, uniform in a disc) of random parameters.
    #[arg(long, default_value_t = 0.0, value_name = "Å", value_parser = crate::util::finite_f64)]
    pub max_shift: f64,
}

impl ImagingArgs {
    /// The checked settings; errors name the flags.
    pub fn settings(&self) -> anyhow::Result<mcg_physics::simulate::RandomImaging> {
        let settings = mcg_physics::simulate::RandomImaging {
            defocus_um: parse_defocus_range(&self.defocus_um)?,
            voltage: self.voltage,
            cs: self.cs,
            amplitude_contrast: self.amp_contrast,
            max_shift: self.max_shift,
            shift_sigma: None,
        };
        settings.validate().map_err(|m| {
            anyhow::anyhow!(
                "the imaging settings (--defocus-um, --voltage, --cs, --amp-contrast, \
                 --max-shift): {m}"
            )
        })?;
        Ok(settings)
    }
}

/// The flags that help locate a particle set's images and sampling.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LocateArgs {
    /// Folder holding the images, when the metadata's image paths do not resolve against the
    /// metadata file's own folder.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Pixel size in Å, for files that do not record it (a size written in the file wins).
    #[arg(long, value_name = "Å", value_parser = crate::util::finite_f64)]
    pub apix: Option<f64>,
}

impl LocateArgs {
    /// The library's settings.
    pub fn get(&self) -> mcg_dataset::input::Locate {
        mcg_dataset::input::Locate {
            data_dir: self.data_dir.clone(),
            apix: self.apix,
        }
    }
}
