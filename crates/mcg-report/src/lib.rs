//! Judging a trained run: [`report()`] samples G along its latent segment, aligns the series
//! once onto a ground truth (a `synth` folder) and measures it the paper's way — the FSC of
//! each end against its state, the FSCCC matrices beside the truth's, the discrete
//! probabilities or the recovered β(α) — into `metrics.json` ([`Metrics`], one typed value),
//! PNG figures ([`plot`], drawn with an embedded font) and one `report.html` that opens with
//! the result and keeps the evidence (FSC curves, training curves, images, quality over time)
//! below it.
//!
//! # Example: score a run against a truth folder
//!
//! ```no_run
//! use mcg_dataset::monitor::Silent;
//! use mcg_report::{ReportSettings, report};
//!
//! let mut settings = ReportSettings::new("hsp90-discrete/run", "hsp90-discrete/report");
//! settings.truth = Some("hsp90-discrete".into());
//! let metrics = report(&settings, &Silent::new())?;
//! let ends = metrics.fsc_ends.expect("a truth was given");
//! println!("α = 0 end: FSC 0.5 at {:?} Å", ends.alpha_0.fsc.resolution_angstrom.half);
//! if let Some(p) = &metrics.probabilities {
//!     println!("{} {:.2}, {} {:.2}", p.alpha_0_state, p.alpha_0_fraction, p.alpha_1_state, p.alpha_1_fraction);
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The crate's tests run this on a small synthetic set and a short run.
//!
//! Without a truth, [`validate()`] compares two runs trained on independent halves of a
//! particle set (the gold standard): B aligned onto A, their conformations matched along the
//! landscape, the FSC of each pair with its 0.143 resolution, and the agreement of their FSCCC
//! matrices and probabilities, into `validation.json` ([`Validation`]); `report` adds the same
//! comparison with [`ReportSettings::half_set`].
//!
//! Two map files are compared by [`maps`]: their FSC ([`maps::fsc_maps`]) and the alignment
//! of one onto the other ([`maps::align_maps`]), as the `fsc` and `align` commands run them.
//! [`sample::sample`] writes a run's landscape as a volume series with a ChimeraX script.

// `deny`, not `forbid`: ndarray's `s!` macro expands to an `allow(unsafe_code)`.
#![deny(unsafe_code)]

pub mod classification;
pub mod maps;
pub mod plot;
mod relion;
mod report;
pub mod sample;
pub mod validate;

pub use mcg_runfiles::Validation;
pub use mcg_runfiles::{Metrics, metrics};
pub use report::{OUTPUTS, ReportSettings, report};
pub use validate::{ValidateSettings, validate};
