//! The files that pass between a training run and its report, as types, with no libtorch (so
//! that `xtask`, which must build before libtorch is installed, reads them too): the run
//! folder's layout ([`RunDir`]), its `config.json` ([`RunConfigFile`], [`DataDescription`]), its
//! `metrics.jsonl` lines ([`StepMetrics`], [`read_metrics`]), and a report's `metrics.json`
//! ([`Metrics`]) with its optional half-set validation ([`Validation`], also a `validate`
//! folder's `validation.json`), and a reconstruction's `reconstruct.json` ([`reconstruct`]).
//! `mcg-train` writes the run folder and `mcg-report` the report
//! through these types; nothing else spells their names or fields.

#![forbid(unsafe_code)]

pub mod metrics;
pub mod reconstruct;
mod run;

pub use metrics::{Metrics, Validation};
pub use run::{
    DataDescription, FileError, RUN_FILES, RunConfigFile, RunDir, StepMetrics, read_metrics,
};
