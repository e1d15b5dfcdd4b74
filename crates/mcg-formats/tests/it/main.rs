//! Integration tests of the formats crate, one module per format. Files written by other
//! programs are read in place from `../shared/data` (see [`shared`]).

mod cs_interop;
mod mrc_interop;
mod star_interop;

pub use mcg_testdata::shared;
