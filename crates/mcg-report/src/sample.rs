//! A trained run's landscape as a volume series, as the `sample` command writes it: G's volumes
//! at α = m/(n − 1), m = 0 … n − 1 (the paper's α_m = m/L with L = n − 1), as MRC maps with the
//! data's voxel size ([`sample_name`]), `landscape.cxc`, a ChimeraX script that opens them as a
//! volume series, plays it and records `landscape.mp4`, and `samples.json` ([`Samples`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use mcg_dataset::guard::{refuse_writing_over_inputs, write_json_atomic};
use mcg_dataset::monitor::Monitor;
use mcg_train::device::{self, DeviceChoice};
use serde::Serialize;

/// The settings of [`sample`].
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSettings {
    /// The run folder (config.json and checkpoint.safetensors of a training run).
    pub run: PathBuf,
    /// Number of volumes, α evenly spaced from 0 to 1 inclusive (2 to 1000).
    pub n: usize,
    /// Output folder (created if missing).
    pub out: PathBuf,
    /// Where G runs.
    pub device: DeviceChoice,
}

/// What [`sample`] wrote: `samples.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Samples {
    /// The run folder.
    pub run: String,
    /// The checkpoint's generator step.
    pub step: u64,
    /// The data's voxel size, Å.
    #[serde(rename = "pixel_size_A")]
    pub pixel_size_a: f64,
    /// α of each volume.
    pub alphas: Vec<f64>,
    /// Each volume's file name, in the output folder.
    pub files: Vec<String>,
    /// The ChimeraX script's file name.
    pub chimerax_script: String,
    /// The surface level of the script ([`mass_level`] of the middle volume at 80 %).
    pub surface_level: f64,
}

/// File names of a series of samples: `volume_000.mrc`, … (zero-padded so that they sort).
pub fn sample_name(m: usize) -> String {
    format!("volume_{m:03}.mrc")
}

/// Samples the run `settings.run` at `settings.n` values of α into `settings.out`, never over
/// the run's own files, stopping between volumes when `monitor` asks.
pub fn sample(settings: &SampleSettings, monitor: &dyn Monitor) -> Result<Samples> {
    let n = settings.n;
    ensure!(
        (2..=1000).contains(&n),
        "--n {n}: expected between 2 and 1000 volumes"
    );
    let dev = device::select(settings.device)?;
    let trained = mcg_train::run::load_run(&settings.run, dev)
        .with_context(|| format!("loading the run {}", settings.run.display()))?;
    let inputs: Vec<PathBuf> = mcg_train::run::RUN_FILES
        .iter()
        .map(|name| settings.run.join(name))
        .collect();
    let outputs = (0..n)
        .map(sample_name)
        .chain(["landscape.cxc".into(), "samples.json".into()]);
    refuse_writing_over_inputs(&inputs, &settings.out, outputs, "the output")?;
    std::fs::create_dir_all(&settings.out)
        .with_context(|| format!("creating {}", settings.out.display()))?;
    let last = (n - 1) as f64;
    let mut files = Vec::with_capacity(n);
    let mut alphas = Vec::with_capacity(n);
    let mut middle = None;
    for m in 0..n {
        monitor.check_cancelled()?;
        let alpha = m as f64 / last;
        let volume =
            mcg_train::run::volume_at(&trained.trainer, alpha as f32, trained.apix as f32)?;
        let path = settings.out.join(sample_name(m));
        mcg_formats::mrc::write_volume(&path, &volume)
            .with_context(|| format!("writing {}", path.display()))?;
        if m == n / 2 {
            middle = Some(volume);
        }
        files.push(sample_name(m));
        alphas.push(alpha);
    }
    let level = middle.map_or(0.0, |v| mass_level(v.data().iter().copied(), 0.8));
    write_cxc(&settings.out.join("landscape.cxc"), n, level)?;
    let samples = Samples {
        run: settings.run.display().to_string(),
        step: trained.trainer.step(),
        pixel_size_a: trained.apix,
        alphas,
        files,
        chimerax_script: "landscape.cxc".into(),
        surface_level: f64::from(level),
    };
    write_json_atomic(&settings.out.join("samples.json"), &samples)?;
    Ok(samples)
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
    Ok(mcg_fsio::write_atomic(path, text.as_bytes())?)
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

    #[test]
    fn samples_json_reads_as_the_command_prints_it() {
        // The file is written from the struct directly, the command prints it through a JSON
        // value: with only f64 numbers both spell every value alike.
        let samples = Samples {
            run: "run".into(),
            step: 7,
            pixel_size_a: 2.5,
            alphas: vec![0.0, 1.0 / 3.0],
            files: vec![sample_name(0), sample_name(1)],
            chimerax_script: "landscape.cxc".into(),
            surface_level: f64::from(0.1f32),
        };
        let direct = serde_json::to_string_pretty(&samples).unwrap();
        let value = serde_json::to_value(&samples).unwrap();
        assert_eq!(direct, serde_json::to_string_pretty(&value).unwrap());
        assert_eq!(value["files"][1], "volume_001.mrc");
        assert_eq!(value["pixel_size_A"], 2.5);
    }
}
