//! `multicryogan project`: simulate particle images of a volume.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use mcg_formats::mrc::{self, MrcStackWriter};
use mcg_formats::{ImageRef, OpticsGroup, Particle, ParticleSet, star};
use mcg_physics::Volume;
use mcg_physics::noise::{self, SNR_DEFINITION};
use mcg_physics::normalize::Normalization;
use mcg_physics::rng::{Purpose, stream};
use mcg_physics::simulate::{ImagingParams, ProjectorKind, SimulationConfig, Simulator};
use rand::Rng;
use serde_json::json;
use tracing::info;

use crate::builtin;
use crate::input::Locate;
use crate::progress::Progress;
use crate::stackout::{Sinks, write_overlapped};
use crate::util::{self, WithHint};

/// Simulate particle images: projection at each pose, shift, CTF (on a 2× padded image),
/// white Gaussian noise at a data-set-level SNR, normalisation.
///
/// With --star, one image per row of the STAR file, with its pose, shift and CTF (like
/// relion_project). Without it, --n images at uniformly random poses with defoci drawn from
/// --defocus-um. Writes OUT/particles.mrcs, OUT/particles.star (RELION 3.1) and
/// OUT/manifest.json (every setting, the seed, the noise σ and the SNR definition).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  multicryogan project --n 10000 --ctf --snr-db -10 --out sim\n  multicryogan project --volume map.mrc --star particles.star --ctf --out sim"
)]
pub struct Args {
    /// Volume to project (MRC). Default: the built-in test volume (--box, --apix).
    #[arg(long, value_name = "MRC")]
    volume: Option<PathBuf>,
    /// One image per row of this STAR file, with its poses, shifts and CTF parameters.
    #[arg(long, value_name = "STAR", conflicts_with = "n")]
    star: Option<PathBuf>,
    /// Number of images at random poses (when no --star is given).
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Box of the built-in test volume, voxels (even).
    #[arg(long = "box", default_value_t = 32, value_name = "N")]
    box_size: usize,
    /// Voxel size in Å: of the built-in volume (default 5), or overriding the MRC header's (and
    /// the pixel size of a STAR file that does not record one).
    #[arg(long, value_name = "Å", value_parser = crate::util::finite_f64)]
    apix: Option<f64>,
    /// Folder holding the STAR file's images, when its paths do not resolve against its folder
    /// (only their sizes are checked; their pixels are not read).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Apply the CTF.
    #[arg(long)]
    ctf: bool,
    /// Add white Gaussian noise at this SNR in dB (data-set level: mean clean-image variance
    /// over the box divided by σ²).
    #[arg(
        long,
        value_name = "DB",
        allow_hyphen_values = true,
        conflicts_with = "noise_sigma",
        value_parser = crate::util::finite_f64
    )]
    snr_db: Option<f64>,
    /// Add white Gaussian noise of this standard deviation.
    #[arg(long, value_name = "SIGMA", value_parser = crate::util::finite_f64)]
    noise_sigma: Option<f64>,
    /// Clean images used to estimate the signal variance for --snr-db.
    #[arg(long, default_value_t = 1000)]
    calibration_images: usize,
    #[command(flatten)]
    imaging: util::ImagingArgs,
    /// Projector: fourier (fast) or real-space (line integral; a cross-check).
    #[arg(long, default_value = "fourier")]
    projector: ProjectorKind,
    /// Oversampling of the Fourier projector's 3D transform: 2 (fast; ≈1 % median error) or 4
    /// (below 1 % worst case; 8× the memory).
    #[arg(long, default_value_t = 2, value_name = "S")]
    oversampling: usize,
    /// Per-image normalisation: none, whole (zero mean, unit variance over the box) or
    /// background (RELION's: over the pixels outside the central disc).
    #[arg(long, default_value = "none")]
    normalize: Normalization,
    /// Master seed: the same seed and settings give the same images, bit for bit.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Images formed per batch (memory is proportional to it).
    #[arg(long, default_value_t = 4096)]
    batch: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    util::set_threads(args.threads)?;
    ensure!(args.batch > 0, "--batch must be at least 1");
    let start = Instant::now();
    if args.volume.is_none() {
        let b = args.box_size;
        util::need_memory(
            &format!("--box {b}"),
            "the test volume, its oversampled 3D transform and a batch of images",
            util::projector_bytes(b, args.oversampling) + util::batch_bytes(args.batch, b),
        )?;
    }
    if args.star.is_none() {
        util::need_memory(
            &format!("--n {}", args.n),
            "the particle table",
            args.n as f64
                * (std::mem::size_of::<ImagingParams>() + std::mem::size_of::<Particle>()) as f64,
        )?;
    }
    let volume = load_volume(&args)?;
    let (n_box, apix) = (volume.box_size(), f64::from(volume.apix()));
    let (mut set, params) = match &args.star {
        Some(path) => from_star(path, &args, n_box, apix)?,
        None => random(&args, n_box, apix)?,
    };
    let n = params.len();
    ensure!(n > 0, "nothing to simulate: the particle table is empty");
    info!(n, box_size = n_box, apix, "simulating");

    util::need_memory(
        &format!("--oversampling {} at a {n_box}³ box", args.oversampling),
        "the oversampled 3D transform and a batch of images",
        util::projector_bytes(n_box, args.oversampling) + util::batch_bytes(args.batch, n_box),
    )?;
    util::need_calibration(args.calibration_images, n_box)?;
    util::need_disk(
        &format!("{n} images of {n_box}²"),
        "the particle stack",
        util::stack_bytes(n, n_box),
        &args.out,
    )?;
    let simulator = Simulator::with_oversampling(&volume, args.projector, args.oversampling)
        .context("--oversampling")?;
    let calibration = calibration_params(&args, &params)?;
    let (signal_variance, noise_sigma) = match (args.snr_db, args.noise_sigma) {
        (Some(db), _) => {
            let s2 = simulator.signal_variance(&calibration, args.ctf);
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
        ctf: args.ctf,
        noise_sigma,
        normalization: args.normalize,
        seed: args.seed,
    };

    let inputs: Vec<PathBuf> = args.volume.iter().chain(&args.star).cloned().collect();
    let outputs = ["particles.mrcs", "particles.star", "manifest.json"];
    util::refuse_writing_over_inputs(&inputs, &args.out, outputs, "the output")
        .with_hint("project into another --out folder")?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating the output folder {}", args.out.display()))?;
    let stack_path = args.out.join("particles.mrcs");
    let writer = MrcStackWriter::create(&stack_path, n_box, n_box, apix)?;
    let bar = progress.bar(n as u64, "projecting");
    let sinks = Sinks {
        mrc: writer,
        h5: None,
    };
    let sinks = write_overlapped(sinks, n, args.batch, n_box, progress, |first, out| {
        let chunk = &params[first..first + out.dim().0];
        simulator.simulate(chunk, &config, first as u64, out);
        bar.inc(chunk.len() as u64);
        Ok(())
    })?;
    sinks.mrc.finish()?;
    bar.finish_and_clear();

    for (i, p) in set.particles.iter_mut().enumerate() {
        p.image = Some(ImageRef {
            path: PathBuf::from("particles.mrcs"),
            index: i,
        });
    }
    set.base_dir = args.out.clone();
    let star_path = args.out.join("particles.star");
    star::write_particles(&star_path, &set)?;
    let elapsed = start.elapsed().as_secs_f64();

    let manifest = json!({
        "software": concat!("multicryogan ", env!("CARGO_PKG_VERSION")),
        "command": std::env::args().collect::<Vec<_>>(),
        "volume": args.volume.as_ref().map_or_else(|| "built-in test volume".into(), |p| p.display().to_string()),
        "star": args.star.as_ref().map(|p| p.display().to_string()),
        "images": n,
        "box_size": n_box,
        "pixel_size_A": apix,
        "seed": args.seed,
        "projector": args.projector,
        "oversampling": args.oversampling,
        "ctf": args.ctf,
        "normalization": args.normalize,
        "random_parameters": args.star.is_none().then(|| json!({
            "pose": "uniform on SO(3)",
            "defocus_um": args.imaging.defocus_um,
            "voltage_kV": args.imaging.voltage,
            "cs_mm": args.imaging.cs,
            "amplitude_contrast": args.imaging.amp_contrast,
            "max_shift_A": args.imaging.max_shift,
        })),
        "noise": {
            "sigma": noise_sigma,
            "snr_db": args.snr_db,
            "signal_variance": signal_variance,
            "calibration_images": signal_variance.map(|_| calibration.len()),
            "snr_definition": SNR_DEFINITION,
        },
        "outputs": {"stack": "particles.mrcs", "star": "particles.star"},
        "wall_seconds": elapsed,
    });
    util::write_json_atomic(&args.out.join("manifest.json"), &manifest)?;
    info!(
        seconds = format!("{elapsed:.2}"),
        rate = format!("{:.0} images/s", n as f64 / elapsed),
        "wrote {}",
        args.out.display()
    );
    if args.json {
        util::print_json(&json!({
            "out": args.out, "images": n, "seconds": elapsed,
            "images_per_second": n as f64 / elapsed, "noise_sigma": noise_sigma,
            "peak_rss_mib": util::peak_rss_mib(),
        }))?;
    } else {
        println!("{}", args.out.display());
    }
    Ok(())
}

fn load_volume(args: &Args) -> Result<Volume> {
    match &args.volume {
        Some(path) => mrc::read_volume(path, args.apix).with_hint(
            "the volume must be a cubic MRC map with an even box; --apix sets its voxel size",
        ),
        None => {
            ensure!(
                args.box_size >= 4 && args.box_size.is_multiple_of(2),
                "--box must be even and at least 4, got {}",
                args.box_size
            );
            builtin::test_volume(args.box_size, args.apix.unwrap_or(5.0) as f32)
        }
    }
}

/// One image per STAR row: the row's pose, shift and CTF.
fn from_star(
    path: &Path,
    args: &Args,
    n_box: usize,
    apix: f64,
) -> Result<(ParticleSet, Vec<ImagingParams>)> {
    let locate = Locate {
        data_dir: args.data_dir.clone(),
        apix: args.apix,
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
fn random(args: &Args, n_box: usize, apix: f64) -> Result<(ParticleSet, Vec<ImagingParams>)> {
    ensure!(args.n > 0, "--n must be at least 1");
    let params = random_params(args, 0..args.n)?;
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
fn random_params(args: &Args, range: std::ops::Range<usize>) -> Result<Vec<ImagingParams>> {
    let settings = args.imaging.settings()?;
    Ok(range.map(|i| settings.draw(args.seed, i as u64)).collect())
}

/// The images whose mean variance defines the SNR: with random parameters the first
/// `calibration_images` draws (the generator is defined beyond N); with a STAR file every row
/// when there are at most that many, else that many rows drawn at random.
fn calibration_params(args: &Args, params: &[ImagingParams]) -> Result<Vec<ImagingParams>> {
    let k = args.calibration_images.max(1);
    if args.star.is_none() {
        return random_params(args, 0..k);
    }
    if params.len() <= k {
        return Ok(params.to_vec());
    }
    let mut rng = stream(args.seed, Purpose::Calibration, 0);
    Ok((0..k)
        .map(|_| params[rng.random_range(0..params.len())])
        .collect())
}
