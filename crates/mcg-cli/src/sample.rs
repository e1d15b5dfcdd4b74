//! `multicryogan sample`: volumes along a trained run's latent segment, and a ChimeraX script
//! that plays them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::Args as ClapArgs;
use mcg_train::device::{self, DeviceChoice};
use serde_json::json;

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

/// File names of a series of `n` samples: `volume_000.mrc`, … (zero-padded so that they sort).
pub fn sample_name(m: usize) -> String {
    format!("volume_{m:03}.mrc")
}

pub fn run(args: Args, progress: &crate::progress::Progress) -> Result<()> {
    use crate::progress::Monitor as _;
    ensure!(
        (2..=1000).contains(&args.n),
        "--n {}: expected between 2 and 1000 volumes",
        args.n
    );
    let dev = device::select(args.device)?;
    let trained = mcg_train::run::load_run(&args.run, dev)
        .with_context(|| format!("loading the run {}", args.run.display()))?;
    let inputs: Vec<PathBuf> = mcg_train::run::RUN_FILES
        .iter()
        .map(|n| args.run.join(n))
        .collect();
    let outputs = (0..args.n)
        .map(sample_name)
        .chain(["landscape.cxc".into(), "samples.json".into()]);
    util::refuse_writing_over_inputs(&inputs, &args.out, outputs, "the output")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let last = (args.n - 1) as f64;
    let mut files = Vec::with_capacity(args.n);
    let mut alphas = Vec::with_capacity(args.n);
    let mut middle = None;
    for m in 0..args.n {
        progress.check_cancelled()?;
        let alpha = m as f64 / last;
        let volume =
            mcg_train::run::volume_at(&trained.trainer, alpha as f32, trained.apix as f32)?;
        let path = args.out.join(sample_name(m));
        mcg_formats::mrc::write_volume(&path, &volume)
            .with_context(|| format!("writing {}", path.display()))?;
        if m == args.n / 2 {
            middle = Some(volume);
        }
        files.push(sample_name(m));
        alphas.push(alpha);
    }
    let level = middle.map_or(0.0, |v| mass_level(v.data().iter().copied(), 0.8));
    write_cxc(&args.out.join("landscape.cxc"), args.n, level)?;
    let doc = json!({
        "run": args.run.display().to_string(),
        "step": trained.trainer.step(),
        "pixel_size_A": trained.apix,
        "alphas": alphas,
        "files": files,
        "chimerax_script": "landscape.cxc",
        "surface_level": level,
    });
    util::write_json_atomic(&args.out.join("samples.json"), &doc)?;
    if args.json {
        util::print_json(&doc)?;
    } else {
        println!("{}", args.out.display());
    }
    Ok(())
}

/// The density level whose enclosed voxels hold `fraction` of the positive mass: a surface
/// level that shows the molecule whatever the map's scale.
pub fn mass_level(values: impl Iterator<Item = f32>, fraction: f64) -> f32 {
    let mut v: Vec<f32> = values.filter(|x| *x > 0.0).collect();
    v.sort_unstable_by(|a, b| b.total_cmp(a));
    let total: f64 = v.iter().map(|&x| f64::from(x)).sum();
    let mut sum = 0.0;
    for &x in &v {
        sum += f64::from(x);
        if sum >= fraction * total {
            return x;
        }
    }
    v.last().copied().unwrap_or(0.0)
}

/// A ChimeraX command script: the series as one volume-series model, surfaces at `level`, played
/// once while a movie is recorded.
fn write_cxc(path: &Path, n: usize, level: f32) -> Result<()> {
    let text = format!(
        "# The landscape of a Multi-CryoGAN run: {n} volumes along the latent segment.\n\
         # Open in ChimeraX with: open {name}\n\
         open volume_*.mrc format mrc vseries true\n\
         volume #1 style surface level {level:.6}\n\
         view\n\
         movie record size 800,800\n\
         vseries play #1 loop false maxFrameRate 5\n\
         wait {frames}\n\
         movie encode landscape.mp4 framerate 5\n",
        name = path.file_name().unwrap_or_default().to_string_lossy(),
        frames = n * 12 + 10,
    );
    util::write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mass_level_encloses_the_asked_fraction() {
        // Masses 4, 3, 2, 1 (total 10): 70 % is reached by the two largest voxels.
        let level = mass_level([1.0f32, 4.0, -5.0, 2.0, 3.0].into_iter(), 0.7);
        assert_eq!(level, 3.0);
        assert_eq!(mass_level([0.0f32; 3].into_iter(), 0.8), 0.0);
    }
}
