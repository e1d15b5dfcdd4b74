//! `multicryogan validate`: the flags of [`mcg_report::validate()`], the gold-standard
//! comparison of two runs trained on independent halves of a particle set.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use mcg_report::{ValidateSettings, validate};
use mcg_train::device::DeviceChoice;

use crate::progress::Progress;
use crate::util;

/// Gold-standard validation without a ground truth: compare two runs trained on independent
/// halves of one particle set (RELION's gold standard). Each run's landscape is sampled (G at
/// α = m/L for a continuous latent, each component for a mixture, the one volume in single
/// mode); B's maps are put onto A's by one rigid transform (rotation, hand, shift) found on
/// their consensus maps; each of A's conformations is matched to B's most similar one by
/// AreaFSC (B's α may run the other way; a mixture's components are matched by the
/// permutation of highest total AreaFSC); then the FSC of every matched pair and of the
/// consensus maps gives the resolution at 0.143 (Å and fraction of Nyquist; Nyquist when the
/// curve never falls below 0.143). The halves' FSCCC matrices and state probabilities (the
/// mixture's π, or the paper's rule on L cells of the latent) say how well their landscapes
/// agree. The runs must share the box, the pixel size and the kind of landscape.
///
/// Writes OUT/validation.json (every number), OUT/fsc_halves.png, OUT/fsccc_halves.png and
/// OUT/validation.html, and prints a one-paragraph summary. `multicryogan report --half-set B`
/// adds the same section to a run's report.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    multicryogan validate run_half1 run_half2 --out validation\n  \
    multicryogan validate run_half1 run_half2 --out validation --l 10 --json")]
pub struct Args {
    /// The run of the first half set (`multicryogan train`): the frame of the comparison.
    run_a: PathBuf,
    /// The run of the second half set.
    run_b: PathBuf,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// L: a continuous landscape is sampled at α = m/L, m = 0 … L, and its probabilities
    /// counted on L cells.
    #[arg(long, default_value_t = 20)]
    l: usize,
    /// cpu, cuda or auto (the GPU when one is usable) for sampling the generators.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Print validation.json on stdout instead of the summary.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    let settings = ValidateSettings {
        run_a: args.run_a,
        run_b: args.run_b,
        out: args.out,
        l: args.l,
        device: args.device,
    };
    validate_and_print(&settings, args.json, progress)
}

/// Validates and prints validation.json (`json`) or the summary and the page's path: what
/// `validate` and `train --half-sets` print.
pub fn validate_and_print(
    settings: &ValidateSettings,
    json: bool,
    progress: &Progress,
) -> Result<()> {
    let v = validate(settings, progress)?;
    if json {
        util::print_json(&serde_json::to_value(&v)?)?;
    } else {
        println!("{}", mcg_report::validate::summary(&v));
        println!("{}", settings.out.join("validation.html").display());
    }
    Ok(())
}
