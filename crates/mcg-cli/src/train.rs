//! `multicryogan train`: learn a Multi-CryoGAN (or CryoGAN) model from a particle set.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use mcg_train::models::{GeneratorKind, Mode};
use mcg_train::run::{DataDescription, RunData, RunDir, RunOptions};
use mcg_train::train::{DataPhysics, TrainConfig, estimate_noise_sigma};
use mcg_train::{DeviceChoice, device};
use tracing::info;

use crate::progress::Progress;
use crate::util::{self, WithHint};
use mcg_dataset::input;

/// Train Multi-CryoGAN on a particle set: a generator of volumes whose simulated images (random
/// poses, the data's own CTFs, noise of the data's σ) a discriminator cannot tell from the data.
/// No pose estimation, no clustering.
///
/// Writes RUN/config.json first (every setting), then RUN/metrics.jsonl (one line per logged
/// step: step, time, D loss, G loss, Wasserstein estimate, gradient penalty, images/s),
/// RUN/checkpoint.safetensors (G, D, optimiser states, step; every few minutes, at the end and
/// on Ctrl-C), RUN/volumes/alpha_*.mrc (G at α = 0, 0.5, 1; each checkpoint's kept in
/// RUN/volumes/step_*/) and RUN/images/step_*.png (real
/// images above simulated ones). --resume continues exactly where the checkpoint left off
/// (--steps is the total to reach; --minutes counts this invocation; the time in metrics.jsonl
/// goes on from the checkpoint's, and lines logged after the checkpoint are dropped).
///
/// Settings: the defaults, then --config FILE (a JSON file like RUN/config.json's "train"
/// part; unknown fields are errors), then the flags. σ of the simulated noise: --noise-sigma,
/// else the data set's manifest.json (as written by synth), else estimated from the images'
/// outer annulus.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    multicryogan train --particles hsp90/particles.star --out run --minutes 20\n  \
    multicryogan train --particles hsp90/particles.h5 --out run --steps 5000 --device cuda\n  \
    multicryogan train --particles hsp90/particles.star --out run --steps 8000 --resume")]
pub struct Args {
    /// The particle set (STAR + MRCS, or the HDF5 container).
    #[arg(long, value_name = "FILE")]
    particles: PathBuf,
    /// The run folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// multi (Multi-CryoGAN, a latent segment of conformations) or single (CryoGAN, one volume).
    #[arg(long)]
    mode: Option<Mode>,
    /// Total generator steps to reach.
    #[arg(long)]
    steps: Option<u64>,
    /// Multi mode's generator: mixture (the default: K explicit voxel volumes with learnt
    /// probabilities, for discrete landscapes), voxel (a base volume plus K component volumes
    /// weighted by a small network of α, for continuous ones) or cnn (the paper's 3D CNN).
    #[arg(long, value_name = "KIND")]
    generator: Option<GeneratorKind>,
    /// Component volumes K of the mixture and voxel generators.
    #[arg(long, value_name = "K")]
    components: Option<usize>,
    /// The components live on a grid this many times coarser than the box (1: full resolution).
    #[arg(long, value_name = "F")]
    component_coarsening: Option<usize>,
    /// Start from the paper's recipe instead of our defaults: the CNN generator, G run for every
    /// D step, lr_d = lr_g / 10, D's LeakyReLU slope 0.01, no warm start, no blur.
    #[arg(long, conflicts_with_all = ["config", "resume"])]
    paper: bool,
    /// Generator steps of the warm start (voxel and mixture generators learn one consensus
    /// volume first).
    #[arg(long, value_name = "STEPS")]
    warm_steps: Option<u64>,
    /// Coarse-to-fine: low-pass real and simulated images by a Gaussian of this σ in pixels,
    /// falling linearly to 0 over --blur-steps.
    #[arg(long, value_name = "PX", value_parser = crate::util::finite_f64)]
    blur: Option<f64>,
    /// Generator steps over which the blur falls to 0.
    #[arg(long, value_name = "STEPS")]
    blur_steps: Option<u64>,
    /// Start from these maps (MRC, the box of the particles): one map sets the volume (single
    /// mode) or the base volume; K maps set the K components of the mixture generator
    /// (--components K --component-coarsening 1). A fresh run only.
    #[arg(long, value_name = "MRC", num_args = 1.., value_delimiter = ',', conflicts_with = "resume")]
    init: Vec<PathBuf>,
    /// Weight of the moment-matching term of G's loss: the mean and covariance of the images'
    /// low-frequency Fourier coefficients against the data's (0: off).
    #[arg(long, value_parser = crate::util::finite_f64)]
    moment_weight: Option<f64>,
    /// Weight of the invariant-distribution term of G's loss: the energy distance between the
    /// data's and the simulated images' distributions of rotation-invariant features (ring
    /// power spectrum, radial profile); 0: off.
    #[arg(long, value_parser = crate::util::finite_f64)]
    invariant_weight: Option<f64>,
    /// Mixture: when the warm start ends, start the components as the consensus dilated by
    /// 1 − D ..= 1 + D about the box centre (a split along the particle's extent); 0: their
    /// small random start.
    #[arg(long, value_name = "D", value_parser = crate::util::finite_f64)]
    split_dilation: Option<f64>,
    /// For this many G steps after the warm start only the mixture's components and π learn,
    /// from the invariant term alone (needs --invariant-weight); 0: none.
    #[arg(long, value_name = "STEPS")]
    invariant_only_steps: Option<u64>,
    /// Mixture, unconditional D: π from a classifier of the components (π = C⁻¹μ, as the
    /// conditional critic's) instead of D's gradient.
    #[arg(long, value_name = "true|false")]
    pi_classifier: Option<bool>,
    /// π follows the classifier only while it tells the components apart by at least this
    /// (C's mean diagonal less its mean off-diagonal entry; default 0.05).
    #[arg(long, value_name = "S", value_parser = crate::util::finite_f64)]
    pi_separation: Option<f64>,
    /// How π is estimated when not by D's gradient: with --pi-classifier or the conditional
    /// critic, `shift` (π = C⁻¹μ, black-box label-shift estimation) or `em` (π moves to the
    /// mean posterior of the real images); or `invariant` (no classifier: π minimises the
    /// energy distance of the invariant features, from running means of its terms).
    #[arg(long, value_name = "shift|em")]
    pi_estimator: Option<mcg_train::train::PiEstimator>,
    /// Mixture: whether the simulated images follow π (`false`: the GAN simulates its
    /// components in equal shares and π, from --pi-estimator, is only estimated and reported).
    #[arg(long, value_name = "true|false")]
    pi_feedback: Option<bool>,
    /// Spreading pressure on the components, relative to the GAN's gradient (0: none).
    #[arg(long, value_parser = crate::util::finite_f64)]
    spread: Option<f64>,
    /// D scores packs of this many images at once (PacGAN); 1 scores images one by one.
    #[arg(long)]
    pack: Option<usize>,
    /// Conditional critic (mixture generator; off by default, use with --component-init 0.02):
    /// D sees each image with its component; a classifier trained on simulated images names
    /// the components of the real ones, and π is estimated from its outputs on the data.
    #[arg(long, value_name = "true|false")]
    conditional: Option<bool>,
    /// Conditional critic: the rate of the running means (the classifier's outputs on real and
    /// on simulated images) from which π is estimated.
    #[arg(long, value_name = "RATE", value_parser = crate::util::finite_f64)]
    pi_rate: Option<f64>,
    /// Conditional critic: weight of the classifier's cross-entropy on simulated images in G's
    /// loss (InfoGAN's term; 0: none).
    #[arg(long, value_name = "W", value_parser = crate::util::finite_f64)]
    classifier_weight: Option<f64>,
    /// Standard deviation of the components' random starting differences (density units; 1e-3
    /// by default, about 0.02 with --conditional true).
    #[arg(long, value_name = "SIGMA", value_parser = crate::util::finite_f64)]
    component_init: Option<f64>,
    /// Conditional critic: the temperature (0 < T ≤ 1) of the posterior that real images'
    /// components are drawn from when the components start, rising to 1 over --sharpen-steps.
    #[arg(long, value_name = "T", value_parser = crate::util::finite_f64)]
    sharpen: Option<f64>,
    /// Generator steps after the warm start over which the temperature rises to 1.
    #[arg(long, value_name = "STEPS")]
    sharpen_steps: Option<u64>,
    /// Conditional critic: order each batch by component, so that D's packs hold one
    /// component's images.
    #[arg(long, value_name = "true|false")]
    sorted_packs: Option<bool>,
    /// The forward model's projector: fourier (central slices) or real-space (line integrals).
    #[arg(long, value_name = "KIND")]
    projector: Option<mcg_train::forward::Projector>,
    /// Adam learning rate of G.
    #[arg(long, value_parser = crate::util::finite_f64)]
    lr_g: Option<f64>,
    /// Adam learning rate of D.
    #[arg(long, value_parser = crate::util::finite_f64)]
    lr_d: Option<f64>,
    /// Multi mode with a low-dimensional latent of this many dimensions and a small decoder,
    /// instead of the paper's 32³ latent (faster).
    #[arg(long, value_name = "D")]
    latent_dims: Option<usize>,
    /// Train for this many minutes (this invocation).
    #[arg(long, value_parser = crate::util::finite_f64)]
    minutes: Option<f64>,
    /// Settings file (JSON).
    #[arg(long, value_name = "JSON")]
    config: Option<PathBuf>,
    /// Continue from RUN/checkpoint.safetensors with RUN/config.json's settings.
    #[arg(long)]
    resume: bool,
    /// Start over in a RUN folder that holds another run: remove its config.json,
    /// metrics.jsonl, checkpoint, volumes/ and images/ first (without it, such a folder is
    /// refused).
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// cpu, cuda or auto (the GPU when one is usable).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Write a metrics line every this many generator steps.
    #[arg(long)]
    log_every: Option<usize>,
    /// Master seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Images per discriminator step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Discriminator steps per generator step.
    #[arg(long)]
    d_steps: Option<usize>,
    /// Noise σ of the simulated images.
    #[arg(long, conflicts_with = "noise_stack", value_parser = crate::util::finite_f64)]
    noise_sigma: Option<f64>,
    /// Add background patches from this MRC stack (e.g. boxed from empty micrograph regions)
    /// to the simulated images instead of white noise: one random patch per image.
    #[arg(long, value_name = "MRCS")]
    noise_stack: Option<PathBuf>,
    /// The simulated images' noise: auto (coloured with the manifest's spectrum when the set
    /// has one, else white), white (Gaussian of σ), or coloured (the manifest's spectrum, else
    /// the radially averaged power spectrum estimated from 1,000 particles' background outside
    /// --noise-radius). Recorded in config.json. Background patches instead: --noise-stack.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        conflicts_with = "noise_stack"
    )]
    noise: NoiseChoice,
    /// Radius in pixels outside which --noise coloured measures the particles' background
    /// (default: the normalisation's background radius, else 3/4 of half the box).
    #[arg(long, value_name = "PX", value_parser = crate::util::finite_f64)]
    noise_radius: Option<f64>,
    /// Seconds between checkpoints.
    #[arg(long, value_parser = crate::util::finite_f64)]
    checkpoint_seconds: Option<f64>,
    /// Train without the particles whose images hold a NaN or infinite pixel. Without it, such
    /// particles are an error that counts them and names the first.
    #[arg(long)]
    skip_non_finite: bool,
    /// Fourier-crop the particles to N² as they are read (as `multicryogan downsample` does,
    /// without writing a copy): the pixel size grows by the ratio. Recorded in config.json.
    #[arg(long, value_name = "N")]
    downsample: Option<usize>,
    /// Negate the particles as they are read, for a set of dark particles on a light
    /// background (the simulator makes bright ones, as RELION's particles are). The contrast
    /// is measured at the start and a set that looks inverted is warned about. Recorded in
    /// config.json; --resume keeps it.
    #[arg(long)]
    invert: bool,
    /// The per-image normalisation that the real images get as they are read and the simulated
    /// ones after their noise, so that D sees both alike: auto (detect the data's own: none,
    /// whole box, or RELION's background normalisation and its radius), none, whole,
    /// background (outside radius N/2 − 1) or background:R (R pixels). Recorded in
    /// config.json and stated in the log.
    #[arg(
        long,
        value_name = "auto|none|whole|background[:R]",
        default_value = "auto"
    )]
    normalize: String,
    /// Shift the simulated images by Gaussian offsets of this σ (pixels, per axis). Default:
    /// by the shifts of random data particles when the metadata has any, else none.
    #[arg(long, value_name = "PX", value_parser = crate::util::finite_f64, conflicts_with = "no_shifts")]
    shift_sigma: Option<f64>,
    /// Do not shift the simulated images, even when the metadata has shifts.
    #[arg(long)]
    no_shifts: bool,
    /// Gold-standard validation: split the particles at random (by --seed) into two halves,
    /// train one run on each (OUT/half1 with --seed, OUT/half2 with --seed + 1: independent
    /// starts), one after the other with the same settings and budget each, then compare them
    /// as `multicryogan validate` does into OUT/validation (the half-set FSC along the
    /// landscape and its 0.143 resolution, the halves' FSCCC matrices and probabilities).
    /// With --resume each half continues.
    #[arg(long)]
    half_sets: bool,
    #[command(flatten)]
    locate: crate::util::LocateArgs,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    if args.half_sets {
        return half_sets(args, progress);
    }
    train(&args, None, progress)
}

/// `--half-sets`: a run on each half of the particles, then their validation.
fn half_sets(args: Args, progress: &Progress) -> Result<()> {
    let seed = args.seed.unwrap_or(0);
    let mut runs = Vec::new();
    for half in 0..2 {
        let mut one = args.clone();
        one.out = args.out.join(format!("half{}", half + 1));
        one.seed = Some(seed + half as u64);
        one.json = false;
        if !args.resume {
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
        }
        info!(half = half + 1, out = %one.out.display(), "half set");
        train(&one, Some((half, seed)), progress)?;
        runs.push(one.out);
    }
    let settings = mcg_report::ValidateSettings {
        run_a: runs[0].clone(),
        run_b: runs[1].clone(),
        out: args.out.join("validation"),
        l: 20,
        device: args.device,
    };
    crate::validate::validate_and_print(&settings, args.json, progress)
}

/// One run; `half`: on half `h` (0 or 1) of the particles as split by `seed`.
fn train(args: &Args, half: Option<(usize, u64)>, progress: &Progress) -> Result<()> {
    if let Some(t) = args.threads {
        ensure!(t > 0, "--threads must be at least 1");
        device::set_threads(t);
    }
    let dev = device::select(args.device)?;
    info!(device = ?dev, "device");
    let mut config = base_config(args)?;
    apply_flags(&mut config, args);
    let normalize = match args.normalize.as_str() {
        "auto" => None,
        text => Some(parse_normalization(text)?),
    };

    let (mut set, images) = input::particles(&args.particles, &args.locate.get())?;
    ensure!(
        !set.is_empty(),
        "{}: no particles",
        args.particles.display()
    );
    if !args.resume {
        mcg_train::run::check_fresh_run_folder(&args.out, args.force)?;
        // A fresh run writes (and with --force clears) the run files: none may be an input.
        let mut inputs = vec![args.particles.clone()];
        inputs.extend(util::stacks_of(&set));
        inputs.extend(args.init.iter().cloned());
        inputs.extend(args.config.iter().cloned());
        inputs.extend(args.noise_stack.iter().cloned());
        let run_files = mcg_train::run::RUN_FILES;
        util::refuse_writing_over_inputs(&inputs, &args.out, run_files, "the run's")
            .with_hint("copy the file out of the run folder first, or train into another folder")?;
    }
    // Reading every image comes after the cheap refusals.
    let (images, skipped) = input::without_non_finite(
        &args.particles,
        &mut set,
        images,
        args.skip_non_finite,
        "--skip-non-finite trains without them; or fix or remove those images",
        progress,
    )?;
    let images = match half {
        Some((h, seed)) => {
            ensure!(
                set.len() >= 2,
                "{}: --half-sets needs at least 2 particles",
                args.particles.display()
            );
            let [a, b] = mcg_dataset::halves::half_split(set.len(), seed);
            input::subset(&mut set, images, if h == 0 { a } else { b })
        }
        None => images,
    };
    let recorded = if args.resume {
        Some(
            RunDir::new(&args.out)
                .read_config()
                .context("--resume")?
                .data,
        )
    } else {
        None
    };
    let inverted = match &recorded {
        Some(r) => {
            ensure!(
                !args.invert || r.inverted,
                "--invert: the run in {} was trained without it; resume without --invert",
                args.out.display()
            );
            r.inverted
        }
        None => args.invert,
    };
    let look = inspect_images(args, images.as_ref(), inverted, recorded.is_none())?;
    let from = images.box_size();
    let downsampled_from = args.downsample.map(|_| from);
    let images = match args.downsample {
        Some(m) => {
            mcg_dataset::downsample::downsampled(&mut set, images, m).context("--downsample")?
        }
        None => images,
    };
    let n = images.box_size();
    if n < 8 || !n.is_multiple_of(8) {
        return Err(anyhow::anyhow!(
            "{}: the images are {n}×{n} pixels; the trainer needs a box that is a multiple of 8",
            args.particles.display()
        ))
        .with_hint("--downsample N (a multiple of 8) Fourier-crops them as they are read");
    }
    if config.model.box_size != n {
        if args.config.is_some() || args.resume {
            bail!(
                "{}: the images are {n}×{n} pixels but the settings say model.box_size = {}",
                args.particles.display(),
                config.model.box_size
            );
        }
        config.model.box_size = n;
        // The paper's latent cube is the volume's own size (32³ for 32³ volumes): G's volume
        // follows the images instead of being upsampled from 32³.
        config.model.latent_size = n;
    }
    // The normalisation: the flag's, a resumed run's own, or the one found in the data (at
    // the box trained on); the real images are read through it, the simulated ones get it.
    if let Some(how) = normalize {
        config.normalization = how;
    } else if let Some(found) = look.normalization.filter(|_| !args.resume)
        && config.normalization == mcg_physics::normalize::Normalization::None
    {
        // (A settings file that names a normalisation keeps it.)
        config.normalization =
            mcg_dataset::inspect::scaled_normalization(&found.normalization, from, n);
    }
    info!(normalization = %config.normalization, "per-image normalisation of the real and simulated images");
    let images: Box<dyn mcg_formats::ImageSource> = Box::new(
        mcg_dataset::inspect::Adjusted::new(images, inverted, config.normalization)
            .map_err(|e| anyhow::anyhow!("--normalize {}: {e}", config.normalization))?,
    );
    if !args.resume {
        choose_shifts(&mut config, args, &set);
    }
    let apix = images.pixel_size();
    let (mut sigma, mut sigma_source) =
        noise_sigma(args, &config, images.as_ref(), downsampled_from)?;
    let spectrum = coloured_noise(args, &config, images.as_ref(), downsampled_from)?;
    if let Some((spectrum, source)) = &spectrum {
        // The spectrum's own variance, unless the settings give σ.
        if config.noise_sigma.is_none() {
            sigma = spectrum.variance().sqrt();
            sigma_source = source.clone();
        }
        info!(source = %source, "coloured noise");
    }
    info!(sigma, source = %sigma_source, "noise");
    config.noise_sigma = Some(sigma);
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the training settings")?;
    let mut physics = DataPhysics::from_set(&set, apix, sigma);
    if let Some((spectrum, _)) = &spectrum {
        physics = physics.with_spectrum(spectrum, dev);
    }
    if let Some(path) = &args.noise_stack {
        physics.noise_patches = Some(noise_patches(path, n, dev)?);
    }
    let data = RunData {
        images: Arc::from(images),
        physics,
        description: DataDescription {
            particles: args.particles.display().to_string(),
            images: set.len(),
            box_size: n,
            pixel_size: apix,
            noise_sigma: sigma,
            noise_sigma_source: sigma_source,
            noise_stack: args.noise_stack.as_ref().map(|p| p.display().to_string()),
            skipped_non_finite: skipped,
            downsampled_from,
            inverted,
            normalization_found: look.normalization.map(|d| d.to_string()),
            contrast_z: look.contrast.map(|c| c.z),
            noise_spectrum: spectrum
                .as_ref()
                .map(|(s, _)| s.scaled_to_variance(sigma * sigma)),
            half_set: half.map(|(h, seed)| (h + 1, seed)),
        },
    };
    let init_volumes = args
        .init
        .iter()
        .map(|path| {
            mcg_formats::mrc::read_volume(path, None)
                .with_context(|| format!("reading the starting map {}", path.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = RunOptions {
        init_volumes,
        out: args.out.clone(),
        steps: args.steps,
        minutes: args.minutes,
        resume: args.resume,
        force: args.force,
        device: dev,
    };
    // The bar counts steps towards --steps, or else seconds towards --minutes, so its ETA
    // means something either way.
    let (total, unit) = match (args.steps, args.minutes) {
        (Some(steps), _) => (steps, "steps"),
        (None, Some(minutes)) => ((minutes * 60.0).ceil() as u64, "seconds"),
        (None, None) => (0, "steps"),
    };
    let bar = progress.bar(total, "training");
    let summary = mcg_train::run::run(
        config,
        &data,
        &opts,
        &mut |step: u64, _: Option<u64>, m: &mcg_train::train::StepMetrics| {
            let position = if unit == "steps" { step } else { m.time as u64 };
            bar.set_position(position.min(total));
            bar.set_message(format!("step {step}, W {:.3}", m.wasserstein));
        },
        progress.cancel_flag(),
    )
    .with_context(|| format!("training into {}", args.out.display()))?;
    bar.finish_and_clear();
    if summary.interrupted {
        bail!(
            "interrupted at step {}: the checkpoint is saved; continue with --resume",
            summary.step
        );
    }
    if args.json {
        util::print_json(&serde_json::to_value(&summary)?)?;
    } else {
        println!("{}", args.out.display());
    }
    Ok(())
}

/// What the images said of themselves at the start.
struct Look {
    normalization: Option<mcg_dataset::inspect::DetectedNormalization>,
    contrast: Option<mcg_dataset::inspect::Contrast>,
}

/// Measures the contrast (warning when the set looks inverted and is not being inverted, or
/// looks bright and is) and, for a fresh run, finds the data's normalisation, stating both.
fn inspect_images(
    args: &Args,
    images: &dyn mcg_formats::ImageSource,
    inverted: bool,
    fresh: bool,
) -> Result<Look> {
    let what = || format!("inspecting {}", args.particles.display());
    let contrast = mcg_dataset::inspect::measure_contrast(images).with_context(what)?;
    info!(contrast = %contrast, inverted, "contrast");
    if contrast.looks_inverted() && !inverted {
        tracing::warn!(
            "{}: {contrast}; the reconstruction would come out hollow or negative: \
             train with --invert",
            args.particles.display()
        );
    } else if contrast.looks_bright() && inverted {
        tracing::warn!(
            "{}: {contrast}, but --invert makes them dark: leave --invert out",
            args.particles.display()
        );
    }
    let normalization = if fresh && args.normalize == "auto" {
        let found = mcg_dataset::inspect::detect_normalization(images).with_context(what)?;
        info!(found = %found, "normalisation of the data");
        Some(found)
    } else {
        None
    };
    Ok(Look {
        normalization,
        contrast: Some(contrast),
    })
}

fn parse_normalization(text: &str) -> Result<mcg_physics::normalize::Normalization> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("--normalize {text:?}: {e} (or auto)"))
}

/// The simulated images' shifts of a fresh run: --shift-sigma's Gaussian, none with
/// --no-shifts, else the data's when its metadata has any (or the settings' choice).
fn choose_shifts(config: &mut TrainConfig, args: &Args, set: &mcg_formats::ParticleSet) {
    if let Some(sigma) = args.shift_sigma {
        config.shift_sigma_px = sigma;
        config.shifts = false;
    } else if args.no_shifts {
        config.shifts = false;
        config.shift_sigma_px = 0.0;
    } else if config.shift_sigma_px == 0.0 {
        config.shifts |= set
            .particles
            .iter()
            .any(|p| p.shift.x != 0.0 || p.shift.y != 0.0);
    }
    info!(
        data_shifts = config.shifts,
        shift_sigma_px = config.shift_sigma_px,
        "shifts of the simulated images"
    );
}

/// The patches of a noise stack, checked against the image size, on the training device.
fn noise_patches(path: &Path, n: usize, dev: tch::Device) -> Result<tch::Tensor> {
    let data = mcg_formats::mrc::read(path)?.data;
    for (k, patch) in data.axis_iter(ndarray::Axis(0)).enumerate() {
        if let Some((y, x, v)) = mcg_formats::finite::first_non_finite(patch) {
            bail!(
                "{}: patch {}: found {v} at pixel (x {x}, y {y}), expected finite numbers",
                path.display(),
                k + 1
            );
        }
    }
    let (k, ny, nx) = data.dim();
    ensure!(
        ny == n && nx == n,
        "{}: noise patches of {nx}×{ny} pixels, but the particles are {n}×{n}",
        path.display()
    );
    ensure!(k > 0, "{}: the noise stack is empty", path.display());
    let flat: Vec<f32> = data.iter().copied().collect();
    Ok(tch::Tensor::from_slice(&flat)
        .view([k as i64, n as i64, n as i64])
        .to_device(dev))
}

/// Defaults, or the --config file, or (resuming) the run's own config.json.
fn base_config(args: &Args) -> Result<TrainConfig> {
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid training settings", path.display()));
    }
    if args.resume {
        let dir = RunDir::new(&args.out);
        let doc = dir.read_config().context("--resume")?;
        return mcg_train::run::train_config(&doc)
            .with_context(|| format!("{}: field train", dir.config().display()));
    }
    if args.paper {
        return Ok(TrainConfig::paper());
    }
    Ok(TrainConfig::default())
}

fn apply_flags(config: &mut TrainConfig, args: &Args) {
    if let Some(m) = args.mode {
        config.model.mode = m;
    }
    if let Some(d) = args.latent_dims {
        config.model.latent_dims = Some(d);
    }
    if let Some(v) = args.log_every {
        config.log_every = v;
    }
    if let Some(v) = args.seed {
        config.seed = v;
    }
    if let Some(v) = args.batch_size {
        config.batch_size = v;
    }
    if let Some(v) = args.d_steps {
        config.d_steps = v;
    }
    if let Some(v) = args.noise_sigma {
        config.noise_sigma = Some(v);
    }
    if let Some(v) = args.checkpoint_seconds {
        config.checkpoint_seconds = v;
    }
    if let Some(v) = args.generator {
        config.model.generator = v;
    }
    if let Some(v) = args.components {
        config.model.components = v;
    }
    if let Some(v) = args.component_coarsening {
        config.model.component_coarsening = v;
    }
    if let Some(v) = args.warm_steps {
        config.warm_steps = v;
    }
    if let Some(v) = args.blur {
        config.blur_start_px = v;
    }
    if let Some(v) = args.blur_steps {
        config.blur_steps = v;
    }
    if let Some(v) = args.moment_weight {
        config.moment_weight = v;
    }
    if let Some(v) = args.invariant_weight {
        config.invariant_weight = v;
    }
    if let Some(v) = args.split_dilation {
        config.split_dilation = v;
    }
    if let Some(v) = args.invariant_only_steps {
        config.invariant_only_steps = v;
    }
    if let Some(v) = args.pi_classifier {
        config.pi_classifier = v;
    }
    if let Some(v) = args.pi_separation {
        config.pi_separation = v;
    }
    if let Some(v) = args.pi_estimator {
        config.pi_estimator = v;
    }
    if let Some(v) = args.pi_feedback {
        config.pi_feedback = v;
    }
    if let Some(v) = args.spread {
        config.spread = v;
    }
    if let Some(v) = args.pack {
        config.model.pack = v;
    }
    if let Some(v) = args.conditional {
        config.model.conditional = v;
    }
    if let Some(v) = args.pi_rate {
        config.pi_rate = v;
    }
    if let Some(v) = args.classifier_weight {
        config.classifier_weight = v;
    }
    if let Some(v) = args.component_init {
        config.model.component_init = v;
    }
    if let Some(v) = args.sharpen {
        config.sharpen = v;
    }
    if let Some(v) = args.sharpen_steps {
        config.sharpen_steps = v;
    }
    if let Some(v) = args.sorted_packs {
        config.sorted_packs = v;
    }
    if let Some(v) = args.projector {
        config.projector = v;
    }
    if let Some(v) = args.lr_g {
        config.lr_g = v;
    }
    if let Some(v) = args.lr_d {
        config.lr_d = v;
    }
}

/// The `--noise` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NoiseChoice {
    /// Coloured when the set's manifest records a spectrum, else white.
    Auto,
    /// White Gaussian noise of σ.
    White,
    /// Coloured: the manifest's spectrum, else one estimated from the particles' background.
    Coloured,
}

/// The coloured noise's spectrum and where it came from, or `None` for white noise: the
/// manifest's (cropped as the images are with --downsample), else, with --noise coloured, the
/// background's of 1,000 images spread over the set, as the trainer reads them.
fn coloured_noise(
    args: &Args,
    config: &TrainConfig,
    images: &dyn mcg_formats::ImageSource,
    downsampled_from: Option<usize>,
) -> Result<Option<(mcg_physics::noise::NoiseSpectrum, String)>> {
    if args.noise == NoiseChoice::White || args.noise_stack.is_some() {
        return Ok(None);
    }
    let n = images.box_size();
    if let Some((path, spectrum)) = mcg_dataset::folder::noise_spectrum_beside(&args.particles)? {
        return Ok(Some(match downsampled_from {
            Some(from) => (
                spectrum
                    .cropped(n)
                    .with_context(|| format!("{}: noise.spectrum", path.display()))?,
                format!(
                    "{}'s spectrum, cropped {from} → {n} (--downsample)",
                    path.display()
                ),
            ),
            None => (spectrum, format!("{}'s spectrum", path.display())),
        }));
    }
    if args.noise != NoiseChoice::Coloured {
        return Ok(None);
    }
    let radius = args.noise_radius.unwrap_or_else(|| {
        config
            .normalization
            .background_radius(n)
            .unwrap_or(0.375 * n as f64)
    });
    ensure!(
        radius.is_finite() && radius >= 0.0 && radius < n as f64 / 2.0,
        "--noise-radius {radius}: expected a radius from 0 to below half the box ({} px)",
        n / 2
    );
    let count = 1000.min(images.len());
    let indices: Vec<usize> = (0..count).map(|i| i * images.len() / count).collect();
    let mut sample = ndarray::Array3::zeros((count, n, n));
    images
        .read_batch(&indices, sample.view_mut())
        .with_context(|| format!("reading {}", args.particles.display()))?;
    let spectrum = mcg_physics::noise::NoiseSpectrum::estimate_background(sample.view(), radius)
        .with_context(|| {
            format!(
                "{}: estimating the noise spectrum",
                args.particles.display()
            )
        })?;
    Ok(Some((
        spectrum,
        format!("the background outside {radius} px of {count} images"),
    )))
}

/// σ and where it came from. A manifest's σ is that of the particles' own box: Fourier-cropped
/// from `downsampled_from`² to n², white noise keeps its spectrum below the new Nyquist, so its
/// σ per pixel scales by n / downsampled_from.
fn noise_sigma(
    args: &Args,
    config: &TrainConfig,
    images: &dyn mcg_formats::ImageSource,
    downsampled_from: Option<usize>,
) -> Result<(f64, String)> {
    if args.noise_stack.is_some() {
        return Ok((0.0, "none: background patches from --noise-stack".into()));
    }
    if let Some(s) = config.noise_sigma {
        ensure!(s.is_finite() && s >= 0.0, "noise σ must be ≥ 0, got {s}");
        return Ok((s, "settings".into()));
    }
    if let Some((path, s)) = mcg_dataset::folder::noise_sigma_beside(&args.particles)? {
        return Ok(match downsampled_from {
            Some(from) => {
                let n = images.box_size();
                (
                    s * n as f64 / from as f64,
                    format!("{} × {n}/{from} (--downsample)", path.display()),
                )
            }
            None => (s, format!("{}", path.display())),
        });
    }
    let s = estimate_noise_sigma(images, 1000).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((s, "estimated from the outer annulus of 1000 images".into()))
}
