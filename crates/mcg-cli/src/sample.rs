//! `multicryogan sample`: volumes along a trained run's latent segment, and a ChimeraX script
//! that plays them ([`mcg_report::sample::sample`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use mcg_report::sample::{SampleSettings, sample};
use mcg_train::device::DeviceChoice;

use crate::util;

/// Sample a trained run's landscape: G's volumes at α = m/(n − 1), m = 0 … n − 1 (the paper's
/// α_m = m/L with L = n − 1), as MRC maps with the data's voxel size, plus `landscape.cxc`, a
/// ChimeraX script that opens them as a volume series, plays it and records
/// `landscape.mp4`, and `samples.json` (α of each file, the run, its step).
///
/// Open the series in ChimeraX with `open DIR/landscape.cxc` (ChimeraX runs a script from its
/// own folder, so the relative file names resolve).
#[derive(Debug, ClapArgs)]
#[command(after_help = "Example:\n  \
    multicryogan sample --run run --n 21 --out run/landscape")]
pub struct Args {
    /// The run folder (config.json and checkpoint.safetensors of `multicryogan train`).
    #[arg(long, value_name = "DIR")]
    run: PathBuf,
    /// Number of volumes, α evenly spaced from 0 to 1 inclusive (at least 2).
    #[arg(long, default_value_t = 21)]
    n: usize,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// cpu, cuda or auto (the GPU when one is usable).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Print samples.json on stdout as well.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, progress: &crate::progress::Progress) -> Result<()> {
    let settings = SampleSettings {
        run: args.run,
        n: args.n,
        out: args.out,
        device: args.device,
    };
    let samples = sample(&settings, progress)?;
    if args.json {
        util::print_json(&serde_json::to_value(&samples)?)?;
    } else {
        println!("{}", settings.out.display());
    }
    Ok(())
}
