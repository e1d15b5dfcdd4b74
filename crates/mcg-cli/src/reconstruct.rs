//! `multicryogan reconstruct`: the flags of [`mcg_reconstruct::reconstruct`], the main job in
//! one command.

use std::path::PathBuf;

use anyhow::Result;
use mcg_reconstruct::{ReconstructSettings, reconstruct};
use mcg_train::DeviceChoice;

use crate::progress::Progress;
use crate::util;

/// The main job in one command: the conformations of a molecule and their proportions from its
/// particle images.
///
/// Three stages, each in its own folder inside OUT:
///   1. OUT/consensus: the pose-free consensus (CryoGAN, one volume; no pose estimated or
///      marginalised), until its AreaFSC against its previous half-minute stops rising, at most
///      --consensus-minutes;
///   2. OUT/classify: 3D classification with the poses marginalised (maximum likelihood over K
///      class volumes, each image's pose summed over a grid of rotations, as RELION's), from
///      the consensus, until it converges;
///   3. OUT/landscape: the Multi-CryoGAN landscape (pose-free), at most for the rest of
///      --minutes: with --landscape discrete (the default) a mixture whose K components start
///      from the class maps, π held at the classification's; with --landscape continuous a
///      path through the class maps in the order of their similarity, each class covering its
///      share π of the latent segment, extrapolated beyond the outer classes to the
///      continuum's ends. After each minute the landscape is scored by the likelihood of 1,000
///      particles with their poses marginalised; it stops when that stops rising
///      (--landscape-stop) and keeps its best-scored checkpoint.
///
/// With --truth (a `multicryogan synth` folder), OUT/report (the landscape) and
/// OUT/classify/report (the classes) score the result against the ground truth. OUT/
/// reconstruct.json records each stage's time and outcome. --pose-free keeps the paper's pure
/// path: Multi-CryoGAN alone for the whole budget, no classification. Ctrl-C keeps the stage's
/// last checkpoint; --resume continues at the stage reached.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    multicryogan reconstruct --particles hsp90/particles.star --out rec\n  \
    multicryogan reconstruct --particles hsp90/particles.star --out rec --truth hsp90\n  \
    multicryogan reconstruct --particles hsp90/particles.star --out rec --resume\n  \
    multicryogan reconstruct --particles hsp90-continuous/particles.star --out rec_c --landscape continuous --minutes 45\n  \
    multicryogan reconstruct --particles hsp90/particles.star --out rec --consensus-steps 1200 --landscape-steps 1500\n  \
    multicryogan reconstruct --particles hsp90/particles.star --out rec_paper --pose-free --minutes 20")]
pub struct Args {
    /// The particle set (.star, .cs, .h5, .mrcs).
    #[arg(long, value_name = "FILE")]
    particles: PathBuf,
    /// Output folder (a folder per stage inside it).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// The whole budget in minutes: the consensus takes at most --consensus-minutes, the
    /// classification what it needs to converge, the landscape the rest (at least half a
    /// minute).
    #[arg(long, default_value_t = 10.0, value_parser = util::finite_f64)]
    minutes: f64,
    /// The consensus's most minutes.
    #[arg(long, default_value_t = 3.0, value_parser = util::finite_f64)]
    consensus_minutes: f64,
    /// The consensus's most generator steps, instead of --consensus-minutes (in chunks of 200
    /// steps). With --landscape-steps the reconstruction is reproducible: the same seed and
    /// settings give the same maps, bit for bit, on any machine.
    #[arg(long, value_name = "N")]
    consensus_steps: Option<u64>,
    /// The landscape's generator steps, instead of the rest of --minutes.
    #[arg(long, value_name = "N")]
    landscape_steps: Option<u64>,
    /// Number of conformations K: classes, and the landscape's components (or the path's
    /// anchors). Default: 2 with --landscape discrete, 4 with --landscape continuous.
    #[arg(long, value_name = "K")]
    classes: Option<usize>,
    /// discrete (conformations: the landscape a mixture of the classes) or continuous (a
    /// continuum: a path through the classes).
    #[arg(long, default_value = "discrete", value_name = "KIND")]
    landscape: mcg_reconstruct::Landscape,
    /// When the landscape stops: likelihood (once the likelihood of 1,000 particles with
    /// their poses marginalised, scored after each minute of training, has not risen for two
    /// minutes) or budget (at the end of --minutes, the paper's way). Either way the landscape
    /// ends at its best-scored checkpoint.
    #[arg(long, default_value = "likelihood", value_name = "WHEN")]
    landscape_stop: mcg_reconstruct::LandscapeStop,
    /// A `multicryogan synth` folder: report the result against its ground truth.
    #[arg(long, value_name = "DIR")]
    truth: Option<PathBuf>,
    /// The paper's pure pose-free path: Multi-CryoGAN alone, no classification.
    #[arg(long)]
    pose_free: bool,
    /// Seed of every stage.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or auto (the GPU when one is usable).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Continue the reconstruction in --out at the stage it reached.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    locate: util::LocateArgs,
    /// Print reconstruct.json on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    util::set_torch_threads(args.threads)?;
    let settings = ReconstructSettings {
        particles: args.particles,
        locate: args.locate.get(),
        out: args.out,
        minutes: args.minutes,
        consensus_minutes: args.consensus_minutes,
        consensus_steps: args.consensus_steps,
        landscape_steps: args.landscape_steps,
        classes: args
            .classes
            .unwrap_or_else(|| args.landscape.default_classes()),
        landscape: args.landscape,
        landscape_stop: args.landscape_stop,
        truth: args.truth,
        pose_free: args.pose_free,
        seed: args.seed,
        device: args.device,
        resume: args.resume,
    };
    let record = reconstruct(&settings, progress, progress.cancel_flag())?;
    if args.json {
        util::print_json(&serde_json::to_value(&record)?)?;
    } else {
        print!("{}", mcg_reconstruct::summary_text(&settings.out, &record));
    }
    Ok(())
}
