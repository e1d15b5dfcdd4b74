//! `multicryogan classify`: the flags of [`mcg_classify::classify`], 3D classification with
//! the poses marginalised.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use mcg_classify::{ClassifySettings, Init, classify};
use mcg_forward::device::DeviceChoice;

use crate::progress::Progress;
use crate::util::{self, LocateArgs};

/// 3D classification with the poses marginalised (maximum likelihood over K class volumes by
/// expectation-maximisation, as RELION's 3D classification does): each image's pose is summed
/// over a grid of rotations (and of in-plane offsets around its recorded shift, when the set
/// has shifts), with its own CTF and the data's noise (σ from the flag or the set's manifest,
/// else estimated from the images' background). The classes start from the reference, split
/// along the leading principal component of the images' residuals (--init pca) or from random
/// groups (--init random). Frequencies and the rotation grid grow finer as the classes'
/// half-set resolution rises.
///
/// Writes OUT/class_001.mrc … (the class maps), OUT/particles.star (each particle's class,
/// best pose and shift, _rlnMaxValueProbDistribution and _rlnLogLikeliContribution; RELION
/// reads it), OUT/model.json (π, the log-likelihood per iteration, the share of particles that
/// changed class, each class's half-set resolution) and OUT/checkpoint/ (the last complete
/// iteration: Ctrl-C keeps it, --resume continues from it).
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    multicryogan classify --particles demo/particles.star --reference consensus.mrc --classes 2 --out cls\n  \
    multicryogan classify --particles demo/particles.star --reference consensus.mrc --classes 2 --out cls --resume")]
pub struct Args {
    /// The particle set (.star, .cs, .h5, .mrcs).
    #[arg(long, value_name = "FILE")]
    particles: PathBuf,
    #[command(flatten)]
    locate: LocateArgs,
    /// The starting map (MRC) of the particles' box and pixel size, e.g. `train`'s consensus.
    #[arg(long, value_name = "MAP")]
    reference: PathBuf,
    /// Number of classes K.
    #[arg(long, default_value_t = 2)]
    classes: usize,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// EM iterations after the start, at most (see --convergence).
    #[arg(long, default_value_t = 40)]
    iterations: usize,
    /// Stop early once an iteration at the final frequency limit moves no class's probability
    /// by this many points and either changes the class of fewer than this percentage of the
    /// particles or adds less than 0.01 nats per image to the log-likelihood (a continuum's
    /// classes trade particles at their borders for ever). 0: run every iteration.
    /// model.json's converged_at records it.
    #[arg(long, value_name = "PERCENT", default_value_t = 0.2, value_parser = util::finite_f64)]
    convergence: f64,
    /// The most minutes the run may take, its start included: after each iteration it stops
    /// if another as long as the last would end past them (model.json's out_of_time_at
    /// records it; --resume goes on). Without it, the run ends at --iterations or at
    /// convergence, and the same seed gives the same classes on any machine.
    #[arg(long, value_name = "MINUTES", value_parser = util::finite_f64)]
    minutes: Option<f64>,
    /// How the classes start: pca (split along the residuals' leading principal component) or
    /// random (random groups, RELION's way).
    #[arg(long, default_value = "pca")]
    init: Init,
    /// The finest angular step of the rotation grid, degrees.
    #[arg(long, default_value_t = 7.5, value_parser = util::finite_f64)]
    angular_step: f64,
    /// Fine grids are searched locally: each image's N most probable rotations on a grid of
    /// twice the step are refined on the fine grid (RELION's adaptive oversampling), for
    /// steps of 10° and less. 0 scores every fine rotation (slower, exhaustive).
    #[arg(long, value_name = "N", default_value_t = 8)]
    local_candidates: usize,
    /// The starting resolution, as a fraction of Nyquist.
    #[arg(long, default_value_t = 0.3, value_parser = util::finite_f64)]
    initial_resolution: f64,
    /// The resolution, as a fraction of Nyquist, to which the reference is refined into the
    /// data's mean map before the classes are split from it.
    #[arg(long, default_value_t = 0.55, value_parser = util::finite_f64)]
    consensus_resolution: f64,
    /// The frequency limit, as a fraction of Nyquist, at which the classes are held until they
    /// settle (an iteration changes the class of fewer than 1 % of the particles and moves no
    /// probability by a point); then it rises with the classes' half-set resolution. The
    /// split is a low-resolution signal, and an iteration there costs about a third of one at
    /// Nyquist. 1: no hold. model.json's settled_at records when it ended.
    #[arg(long, default_value_t = 0.55, value_parser = util::finite_f64)]
    split_resolution: f64,
    /// Radius in pixels of the in-plane offsets searched around each recorded shift (default:
    /// 2 when the set records shifts, else 0).
    #[arg(long, value_name = "PX", value_parser = util::finite_f64)]
    offset_range: Option<f64>,
    /// RELION's τ² fudge factor of the Wiener filter: τ² is this times the signal-to-noise
    /// ratio per shell from the FSC of each class's half sets, over the data's weight.
    #[arg(long, default_value_t = 2.0, value_parser = util::finite_f64)]
    tau_fudge: f64,
    /// The images carry no CTF.
    #[arg(long)]
    no_ctf: bool,
    /// The noise's pixel σ (default: the set's manifest, else estimated from the background).
    #[arg(long, value_parser = util::finite_f64)]
    noise_sigma: Option<f64>,
    /// Seed of the half-set split and the start.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or auto (the GPU when one is usable).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Continue the run in --out from its last complete iteration.
    #[arg(long)]
    resume: bool,
    /// Print model.json on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    util::set_torch_threads(args.threads)?;
    let settings = ClassifySettings {
        particles: args.particles,
        locate: args.locate.get(),
        reference: args.reference,
        classes: args.classes,
        out: args.out,
        iterations: args.iterations,
        convergence: args.convergence / 100.0,
        init: args.init,
        angular_step_deg: args.angular_step,
        local_candidates: args.local_candidates,
        initial_resolution: args.initial_resolution,
        consensus_resolution: args.consensus_resolution,
        split_resolution: args.split_resolution,
        offset_range_px: args.offset_range,
        tau_fudge: args.tau_fudge,
        ctf: !args.no_ctf,
        noise_sigma: args.noise_sigma,
        seed: args.seed,
        device: args.device,
        resume: args.resume,
        minutes: args.minutes,
        ..ClassifySettings::default()
    };
    let summary = classify(&settings, progress)?;
    if args.json {
        util::print_json(&serde_json::to_value(&summary.model)?)?;
    } else {
        let m = &summary.model;
        let pi: Vec<String> = m.pi.iter().map(|p| format!("{:.1} %", 100.0 * p)).collect();
        println!("classes: {} · π {}", m.classes, pi.join(" / "));
        if let Some(last) = m.history.last() {
            for (k, r) in last.resolution_a.iter().enumerate() {
                println!(
                    "  {}: half-set FSC 0.143 at {r:.1} Å ({:.2} of Nyquist)",
                    summary.out.join(&m.maps[k]).display(),
                    last.resolution_nyquist[k]
                );
            }
        }
    }
    Ok(())
}
