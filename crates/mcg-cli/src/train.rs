//! `multicryogan train`: learn a Multi-CryoGAN (or CryoGAN) model from a particle set.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use mcg_train::data::{HalfSet, NoiseChoice, PrepareSettings, RunDataSettings, prepare_run};
use mcg_train::models::{GeneratorKind, Mode};
use mcg_train::run::RunOptions;
use mcg_train::train::TrainConfig;
use mcg_train::{DeviceChoice, device};
use tracing::info;

use crate::progress::Progress;
use crate::util::{self, WithHint};

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
    /// weighted by a small network of α, for continuous ones), path (K anchor volumes at the
    /// centres of the cells of π along the latent segment, linearly interpolated: a continuum
    /// started from ordered class maps with --init, as `reconstruct --landscape continuous`
    /// does) or cnn (the paper's 3D CNN).
    #[arg(long, value_name = "KIND")]
    generator: Option<GeneratorKind>,
    /// Component volumes K of the mixture and voxel generators, or anchors of the path.
    #[arg(long, value_name = "K")]
    components: Option<usize>,
    /// Start from the paper's recipe instead of our defaults: the CNN generator, G run for every
    /// D step, lr_d = lr_g / 10, D's LeakyReLU slope 0.01, no warm start, no blur.
    #[arg(long, conflicts_with_all = ["config", "resume"])]
    paper: bool,
    /// Start from these maps (MRC, the box of the particles): one map sets the volume (single
    /// mode) or the base volume; K maps set the K components of the mixture generator
    /// (--components K --component-coarsening 1) or the path's K anchors, in order. A fresh
    /// run only.
    #[arg(long, value_name = "MRC", num_args = 1.., value_delimiter = ',', conflicts_with = "resume")]
    init: Vec<PathBuf>,
    /// Mixture: whether the simulated images follow π (`false`: the GAN simulates its
    /// components in equal shares, and π is only learnt and reported).
    #[arg(long, value_name = "true|false")]
    pi_feedback: Option<bool>,
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
    /// Master seed.
    #[arg(long)]
    seed: Option<u64>,
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
    noise: NoiseFlag,
    /// Radius in pixels outside which --noise coloured measures the particles' background
    /// (default: the normalisation's background radius, else 3/4 of half the box).
    #[arg(long, value_name = "PX", value_parser = crate::util::finite_f64)]
    noise_radius: Option<f64>,
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
    /// Any other setting of a --config file (RUN/config.json's "train" part) as KEY=VALUE:
    /// KEY a field (model.FIELD for the model's), VALUE JSON or else a string; applied after
    /// the other flags, repeatable. E.g. --set warm_steps=0 --set model.pack=4 --set
    /// projector=real-space --set lr_d=1e-4 --set checkpoint_seconds=60.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
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
    util::set_torch_threads(args.threads)?;
    let dev = device::select(args.device)?;
    info!(device = ?dev, "device");
    let mut config = base_config(args)?;
    apply_flags(&mut config, args);
    config.apply_sets(&args.set)?;
    let normalization = match args.normalize.as_str() {
        "auto" => None,
        text => Some(
            text.parse()
                .map_err(|e| anyhow::anyhow!("--normalize {text:?}: {e} (or auto)"))?,
        ),
    };
    let invert = if args.resume {
        mcg_train::run::resumed_inversion(&args.out, args.invert)?
    } else {
        mcg_train::run::check_fresh_run_folder(&args.out, args.force)?;
        args.invert
    };
    let settings = RunDataSettings {
        prepare: PrepareSettings {
            particles: args.particles.clone(),
            locate: args.locate.get(),
            skip_non_finite: args.skip_non_finite,
            half: half.map(|(index, seed)| HalfSet { index, seed }),
            invert,
            downsample: args.downsample,
            noise: match args.noise {
                NoiseFlag::Auto => NoiseChoice::Auto,
                NoiseFlag::White => NoiseChoice::White,
                NoiseFlag::Coloured => NoiseChoice::Coloured,
            },
            noise_radius: args.noise_radius,
            noise_stack: args.noise_stack.clone(),
            ..PrepareSettings::default()
        },
        normalization,
        shift_sigma: args.shift_sigma,
        no_shifts: args.no_shifts,
        resume: args.resume,
        fixed_box: args.config.is_some() || args.resume,
    };
    // A fresh run writes (and with --force clears) the run files: none may be an input.
    let refuse_inputs = |set: &mcg_formats::ParticleSet| -> Result<()> {
        if args.resume {
            return Ok(());
        }
        let mut inputs = vec![args.particles.clone()];
        inputs.extend(util::stacks_of(set));
        inputs.extend(args.init.iter().cloned());
        inputs.extend(args.config.iter().cloned());
        inputs.extend(args.noise_stack.iter().cloned());
        let run_files = mcg_train::run::RUN_FILES;
        util::refuse_writing_over_inputs(&inputs, &args.out, run_files, "the run's")
            .with_hint("copy the file out of the run folder first, or train into another folder")
    };
    let data = prepare_run(&mut config, &settings, dev, progress, &refuse_inputs)?;
    let opts = RunOptions {
        init_volumes: mcg_train::run::read_init_volumes(&args.init)?,
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

/// Defaults, or the --config file, or (resuming) the run's own config.json.
fn base_config(args: &Args) -> Result<TrainConfig> {
    if let Some(path) = &args.config {
        return TrainConfig::from_settings_file(path);
    }
    if args.resume {
        return mcg_train::run::resumed_settings(&args.out);
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
    if let Some(v) = args.seed {
        config.seed = v;
    }
    if let Some(v) = args.noise_sigma {
        config.noise_sigma = Some(v);
    }
    if let Some(v) = args.generator {
        config.model.generator = v;
    }
    if let Some(v) = args.components {
        config.model.components = v;
    }
    if let Some(v) = args.pi_feedback {
        config.pi_feedback = v;
    }
}

/// The `--noise` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NoiseFlag {
    /// Coloured when the set's manifest records a spectrum, else white.
    Auto,
    /// White Gaussian noise of σ.
    White,
    /// Coloured: the manifest's spectrum, else one estimated from the particles' background.
    Coloured,
}
