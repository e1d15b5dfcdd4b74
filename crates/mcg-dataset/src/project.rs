//! Projections of one volume (like relion_project): one image per row of a STAR file, or
//! images at random poses; shift, CTF (on a 2× padded image), white Gaussian noise at a
//! data-set-level SNR, normalisation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mcg_formats::mrc::{self, MrcStackWriter};
use mcg_formats::{ImageRef, OpticsGroup, Particle, ParticleSet, star};
use mcg_physics::Volume;
use mcg_physics::noise::{self, SNR_DEFINITION};
use mcg_physics::normalize::Normalization;
use mcg_physics::rng::{Purpose, stream};
use mcg_physics::simulate::{
    ImagingParams, ProjectorKind, RandomImaging, SimulationConfig, Simulator,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

use crate::builtin;
use crate::folder::{DataSetDir, MANIFEST, Noise, Outputs, STACK, STAR};
use crate::guard;
use crate::hint::WithHint;
use crate::input::Locate;
use crate::monitor::Monitor;
use crate::sinks::{Sinks, write_overlapped};

/// Everything that defines a projection run. [`ProjectSettings::new`] gives the CLI's
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectSettings {
    /// Volume to project (MRC); `None`: the built-in test volume ([`crate::builtin`]).
    pub volume: Option<PathBuf>,
    /// One image per row of this STAR file, with its poses, shifts and CTF parameters;
    /// `None`: `n` images at random poses.
    pub star: Option<PathBuf>,
    /// Number of images at random poses (when no STAR file is given).
    pub n: usize,
    /// Box of the built-in test volume, voxels (even).
    pub box_size: usize,
    /// Voxel size in Å: of the built-in volume (default 5), or overriding the MRC header's
    /// (and the pixel size of a STAR file that does not record one).
    pub apix: Option<f64>,
    /// Folder holding the STAR file's images, when its paths do not resolve against its folder.
    pub data_dir: Option<PathBuf>,
    /// Apply the CTF.
    pub ctf: bool,
    /// Add white Gaussian noise at this SNR in dB (data-set level).
    pub snr_db: Option<f64>,
    /// Add white Gaussian noise of this standard deviation (when no SNR is given).
    pub noise_sigma: Option<f64>,
    /// Clean images used to estimate the signal variance for `snr_db`.
    pub calibration_images: usize,
    /// The distributions of random imaging parameters.
    pub imaging: RandomImaging,
    /// The projector.
    pub projector: ProjectorKind,
    /// Oversampling of the Fourier projector's 3D transform: 2 or 4.
    pub oversampling: usize,
    /// Per-image normalisation.
    pub normalization: Normalization,
    /// Master seed: the same seed and settings give the same images, bit for bit.
    pub seed: u64,
    /// Images formed per batch (memory is proportional to it).
    pub batch: usize,
    /// Output folder.
    pub out: PathBuf,
    /// The command line recorded in the manifest (empty from a library call).
    pub command: Vec<String>,
}

impl ProjectSettings {
    /// `n` noiseless images of the built-in volume at random poses into `out`, with the CLI's
    /// defaults (32³ box, no CTF, Fourier projector, oversampling 2, seed 0).
    pub fn new(n: usize, out: impl Into<PathBuf>) -> Self {
        Self {
            volume: None,
            star: None,
            n,
            box_size: 32,
            apix: None,
            data_dir: None,
            ctf: false,
            snr_db: None,
            noise_sigma: None,
            calibration_images: 1000,
            imaging: RandomImaging::default(),
            projector: ProjectorKind::Fourier,
            oversampling: 2,
            normalization: Normalization::None,
            seed: 0,
            batch: 4096,
            out: out.into(),
            command: Vec::new(),
        }
    }
}

/// `manifest.json` of a `project` folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectManifest {
    /// `multicryogan VERSION`.
    pub software: String,
    /// The command line.
    pub command: Vec<String>,
    /// The volume's file, or "built-in test volume".
    pub volume: String,
    /// The STAR file whose rows were projected.
    pub star: Option<String>,
    /// Images made.
    pub images: usize,
    /// Box, pixels.
    pub box_size: usize,
    /// Pixel size, Å.
    #[serde(rename = "pixel_size_A")]
    pub pixel_size: f64,
    /// Master seed.
    pub seed: u64,
    /// The projector.
    pub projector: ProjectorKind,
    /// Oversampling of the Fourier projector.
    pub oversampling: usize,
    /// Whether the CTF was applied.
    pub ctf: bool,
    /// Per-image normalisation.
    pub normalization: Normalization,
    /// The random parameters' distributions, without a STAR file.
    pub random_parameters: Option<RandomParameters>,
    /// The noise added.
    pub noise: Noise,
    /// The files written.
    pub outputs: Outputs,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
}

/// The distributions random imaging parameters were drawn from, as a manifest records them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RandomParameters {
    /// "uniform on SO(3)".
    pub pose: String,
    /// The defocus range `MIN:MAX`, µm.
    pub defocus_um: String,
    /// Acceleration voltage, kV.
    #[serde(rename = "voltage_kV")]
    pub voltage_kv: f64,
    /// Spherical aberration, mm.
    pub cs_mm: f64,
    /// Amplitude contrast.
    pub amplitude_contrast: f64,
    /// Largest shift, Å.
    #[serde(rename = "max_shift_A")]
    pub max_shift: f64,
}

/// Simulates the images `s` describes into `s.out`: particles.mrcs, particles.star (RELION
/// 3.1) and manifest.json. Returns a summary (folder, images, seconds, rate, σ).
pub fn project(s: &ProjectSettings, progress: &dyn Monitor) -> Result<Value> {
    ensure!(s.batch > 0, "--batch must be at least 1");
    if let Some(db) = s.snr_db {
        ensure!(
            db.is_finite(),
            "--snr-db must be a finite number of dB, got {db}"
        );
    }
    if s.star.is_none() {
        s.imaging
            .validate()
            .map_err(|m| anyhow::anyhow!("the imaging settings: {m}"))?;
    }
    let start = Instant::now();
    if s.volume.is_none() {
        let b = s.box_size;
        guard::need_memory(
            &format!("--box {b}"),
            "the test volume, its oversampled 3D transform and a batch of images",
            guard::projector_bytes(b, s.oversampling) + guard::batch_bytes(s.batch, b),
        )?;
    }
    if s.star.is_none() {
        guard::need_memory(
            &format!("--n {}", s.n),
            "the particle table",
            s.n as f64
                * (std::mem::size_of::<ImagingParams>() + std::mem::size_of::<Particle>()) as f64,
        )?;
    }
    let volume = load_volume(s)?;
    let (n_box, apix) = (volume.box_size(), f64::from(volume.apix()));
    let (mut set, params) = match &s.star {
        Some(path) => from_star(path, s, n_box, apix)?,
        None => random(s, n_box, apix)?,
    };
    let n = params.len();
    ensure!(n > 0, "nothing to simulate: the particle table is empty");
    info!(n, box_size = n_box, apix, "simulating");

    guard::need_memory(
        &format!("--oversampling {} at a {n_box}³ box", s.oversampling),
        "the oversampled 3D transform and a batch of images",
        guard::projector_bytes(n_box, s.oversampling) + guard::batch_bytes(s.batch, n_box),
    )?;
    guard::need_calibration(s.calibration_images, n_box)?;
    guard::need_disk(
        &format!("{n} images of {n_box}²"),
        "the particle stack",
        guard::stack_bytes(n, n_box),
        &s.out,
    )?;
    let simulator = Simulator::with_oversampling(&volume, s.projector, s.oversampling)
        .context("--oversampling")?;
    let calibration = calibration_params(s, &params)?;
    let (signal_variance, noise_sigma) = match (s.snr_db, s.noise_sigma) {
        (Some(db), _) => {
            let s2 = simulator.signal_variance(&calibration, s.ctf);
            ensure!(
                s2 > 0.0,
                "the clean images have zero variance: is the volume empty?"
            );
            (Some(s2), Some(noise::sigma_for_snr_db(s2, db)))
        }
        (None, Some(sigma)) => {
            ensure!(
                sigma.is_finite() && sigma >= 0.0,
                "--noise-sigma must be ≥ 0, got {sigma}"
            );
            (None, Some(sigma))
        }
        (None, None) => (None, None),
    };
    let config = SimulationConfig {
        ctf: s.ctf,
        noise_sigma,
        noise_spectrum: None,
        normalization: s.normalization,
        seed: s.seed,
    };

    let inputs: Vec<PathBuf> = s.volume.iter().chain(&s.star).cloned().collect();
    let outputs = [STACK, STAR, MANIFEST];
    guard::refuse_writing_over_inputs(&inputs, &s.out, outputs, "the output")
        .with_hint("project into another --out folder")?;
    std::fs::create_dir_all(&s.out)
        .with_context(|| format!("creating the output folder {}", s.out.display()))?;
    let folder = DataSetDir::new(&s.out);
    let stack_path = folder.stack();
    let writer = MrcStackWriter::create(&stack_path, n_box, n_box, apix)?;
    let bar = progress.bar(n as u64, "projecting");
    let sinks = Sinks {
        mrc: writer,
        h5: None,
    };
    let sinks = write_overlapped(sinks, n, s.batch, n_box, progress, |first, out| {
        let chunk = &params[first..first + out.dim().0];
        simulator.simulate(chunk, &config, first as u64, out);
        bar.inc(chunk.len() as u64);
        Ok(())
    })?;
    sinks.mrc.finish()?;
    bar.finish();

    for (i, p) in set.particles.iter_mut().enumerate() {
        p.image = Some(ImageRef {
            path: PathBuf::from(STACK),
            index: i,
        });
    }
    set.base_dir = s.out.clone();
    let star_path = folder.star();
    star::write_particles(&star_path, &set)?;
    let elapsed = start.elapsed().as_secs_f64();

    let manifest = ProjectManifest {
        software: concat!("multicryogan ", env!("CARGO_PKG_VERSION")).into(),
        command: s.command.clone(),
        volume: s.volume.as_ref().map_or_else(
            || "built-in test volume".into(),
            |p| p.display().to_string(),
        ),
        star: s.star.as_ref().map(|p| p.display().to_string()),
        images: n,
        box_size: n_box,
        pixel_size: apix,
        seed: s.seed,
        projector: s.projector,
        oversampling: s.oversampling,
        ctf: s.ctf,
        normalization: s.normalization,
        random_parameters: s.star.is_none().then(|| RandomParameters {
            pose: "uniform on SO(3)".into(),
            defocus_um: format!("{:?}:{:?}", s.imaging.defocus_um.0, s.imaging.defocus_um.1),
            voltage_kv: s.imaging.voltage,
            cs_mm: s.imaging.cs,
            amplitude_contrast: s.imaging.amplitude_contrast,
            max_shift: s.imaging.max_shift,
        }),
        noise: Noise {
            sigma: noise_sigma,
            snr_db: s.snr_db,
            signal_variance,
            calibration_images: signal_variance.map(|_| calibration.len()),
            snr_definition: SNR_DEFINITION.into(),
            model: None,
            spectrum: None,
        },
        outputs: Outputs {
            stack: Some(STACK.into()),
            star: STAR.into(),
            ..Outputs::default()
        },
        wall_seconds: elapsed,
    };
    guard::write_json_atomic(&folder.manifest(), &manifest)?;
    info!(
        seconds = format!("{elapsed:.2}"),
        rate = format!("{:.0} images/s", n as f64 / elapsed),
        "wrote {}",
        s.out.display()
    );
    Ok(json!({
        "out": s.out, "images": n, "seconds": elapsed,
        "images_per_second": n as f64 / elapsed, "noise_sigma": noise_sigma,
    }))
}

fn load_volume(s: &ProjectSettings) -> Result<Volume> {
    match &s.volume {
        Some(path) => mrc::read_volume(path, s.apix).with_hint(
            "the volume must be a cubic MRC map with an even box; --apix sets its voxel size",
        ),
        None => {
            ensure!(
                s.box_size >= 4 && s.box_size.is_multiple_of(2),
                "--box must be even and at least 4, got {}",
                s.box_size
            );
            builtin::test_volume(s.box_size, s.apix.unwrap_or(5.0) as f32)
        }
    }
}

/// One image per STAR row: the row's pose, shift and CTF.
fn from_star(
    path: &Path,
    s: &ProjectSettings,
    n_box: usize,
    apix: f64,
) -> Result<(ParticleSet, Vec<ImagingParams>)> {
    let locate = Locate {
        data_dir: s.data_dir.clone(),
        apix: s.apix,
    };
    let set = crate::input::metadata(path, &locate)?;
    for (g, optics) in set.optics.iter().enumerate() {
        if let Some(size) = optics.image_size
            && size != n_box
        {
            bail!(
                "{}: optics group {} (_rlnImageSize) has {size}-pixel images but the volume's box is {n_box}",
                path.display(),
                optics.name
            );
        }
        let rel = (optics.pixel_size - apix).abs() / apix;
        if rel > 1e-3 {
            return Err(anyhow::anyhow!(
                "{}: optics group {} has pixel size {} Å but the volume's voxel is {apix} Å",
                path.display(),
                if optics.name.is_empty() {
                    (g + 1).to_string()
                } else {
                    optics.name.clone()
                },
                optics.pixel_size
            ))
            .with_hint("resample the volume, or pass --apix to set the volume's voxel size");
        }
    }
    let params = set
        .particles
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let pose = p.pose.with_context(|| {
                format!(
                    "{}: particle {} has no pose (_rlnAngleRot, _rlnAngleTilt, _rlnAnglePsi)",
                    path.display(),
                    i + 1
                )
            })?;
            Ok(ImagingParams {
                pose,
                shift: p.shift,
                ctf: p.ctf,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((set, params))
}

/// `--n` images with uniform poses, uniform defocus and shifts in a disc.
fn random(
    s: &ProjectSettings,
    n_box: usize,
    apix: f64,
) -> Result<(ParticleSet, Vec<ImagingParams>)> {
    ensure!(s.n > 0, "--n must be at least 1");
    let params = random_params(s, 0..s.n)?;
    let optics = OpticsGroup::single(apix, Some(n_box), &params[0].ctf);
    let particles = params
        .iter()
        .map(|p| Particle {
            image: None,
            optics_group: 0,
            pose: Some(p.pose),
            shift: p.shift,
            ctf: p.ctf,
            class: None,
        })
        .collect();
    let set = ParticleSet {
        optics: vec![optics],
        particles,
        extra: Vec::new(),
        base_dir: PathBuf::new(),
    };
    Ok((set, params))
}

/// The random imaging parameters of images `range`: image `i` draws from its own streams, so
/// they do not depend on batching or threads, and are defined beyond `--n` (for calibration).
fn random_params(s: &ProjectSettings, range: std::ops::Range<usize>) -> Result<Vec<ImagingParams>> {
    Ok(range.map(|i| s.imaging.draw(s.seed, i as u64)).collect())
}

/// The images whose mean variance defines the SNR: with random parameters the first
/// `calibration_images` draws (the generator is defined beyond N); with a STAR file every row
/// when there are at most that many, else that many rows drawn at random.
fn calibration_params(s: &ProjectSettings, params: &[ImagingParams]) -> Result<Vec<ImagingParams>> {
    let k = s.calibration_images.max(1);
    if s.star.is_none() {
        return random_params(s, 0..k);
    }
    if params.len() <= k {
        return Ok(params.to_vec());
    }
    let mut rng = stream(s.seed, Purpose::Calibration, 0);
    Ok((0..k)
        .map(|_| params[rng.random_range(0..params.len())])
        .collect())
}
