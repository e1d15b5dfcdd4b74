//! `multicryogan critic-probe`: the flags of [`mcg_train::probe`], the diagnostic that screens
//! a pose-free critic before it is trained at length.

use std::path::PathBuf;

use anyhow::{Context, Result};
use mcg_dataset::monitor::Monitor;
use mcg_formats::mrc;
use mcg_train::data::{PrepareSettings, RunDataSettings, prepare_run};
use mcg_train::{DeviceChoice, device, probe};

use crate::progress::Progress;
use crate::util::{self, WithHint};

/// The probe's record in its folder.
const PROBE_JSON: &str = "probe.json";

/// How much the GAN's critic pays for the right direction of heterogeneity, against spread in
/// any direction.
///
/// G is frozen at pairs of maps made from two states A and B (a mixture of two components,
/// π ½ / ½) and D alone trains on the particles for --steps steps per pair; its Wasserstein
/// estimate over the second half of them, with a standard error from block means, scores the
/// pair (lower: its images look more like the data). Pairs around m = (A + B)/2 and
/// d = (A − B)/2: truth (m ± d), half (m ± d/2), quarter (m ± d/4), random-i (m ± r, r with
/// d's amplitude spectrum and random phases, within the molecule), mean (m, m). The gap ratio
/// (W(random) − W(truth)) / (W(mean) − W(random)) is what the critic pays for the direction
/// relative to the spread (issue 26 asks a pose-free method for at least 0.5). Writes
/// OUT/probe.json.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    multicryogan critic-probe --particles demo/particles.star --states demo/ground_truth/beta_00.mrc demo/ground_truth/beta_20.mrc --out probe\n  \
    multicryogan critic-probe --particles demo/particles.star --states a.mrc b.mrc --out probe --steps 300 --random 1")]
pub struct Args {
    /// The particle set (.star, .cs, .h5, .mrcs).
    #[arg(long, value_name = "FILE")]
    particles: PathBuf,
    /// The two states A and B (MRC maps of the data's box).
    #[arg(long, num_args = 2, value_names = ["A", "B"], required = true)]
    states: Vec<PathBuf>,
    /// Output folder (probe.json).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// D steps per pair (at least 20; the second half is scored).
    #[arg(long, default_value_t = 600)]
    steps: u64,
    /// Number of random directions.
    #[arg(long, default_value_t = 2)]
    random: usize,
    /// Seed of the critic, the simulations and the random directions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or auto (the GPU when one is usable).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    locate: util::LocateArgs,
    /// Print probe.json on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    util::set_torch_threads(args.threads)?;
    anyhow::ensure!(
        args.steps >= 20,
        "--steps: found {}, expected at least 20 (its second half makes 10 blocks)",
        args.steps
    );
    let read = |path: &PathBuf| {
        mrc::read_volume(path, None)
            .with_context(|| format!("--states: reading {}", path.display()))
    };
    let (a, b) = (read(&args.states[0])?, read(&args.states[1])?);
    let dev = device::select(args.device).map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let mut config = probe::config(args.seed);
    let settings = RunDataSettings {
        prepare: PrepareSettings {
            particles: args.particles.clone(),
            locate: args.locate.get(),
            ..PrepareSettings::default()
        },
        normalization: None,
        shift_sigma: None,
        no_shifts: false,
        resume: false,
        fixed_box: false,
    };
    let refuse_inputs = |set: &mcg_formats::ParticleSet| -> Result<()> {
        let mut inputs = vec![args.particles.clone()];
        inputs.extend(util::stacks_of(set));
        inputs.extend(args.states.iter().cloned());
        util::refuse_writing_over_inputs(&inputs, &args.out, [PROBE_JSON], "the probe's")
            .with_hint("write the probe into another folder")
    };
    let data = prepare_run(&mut config, &settings, dev, progress, &refuse_inputs)?;
    let n = config.model.box_size;
    for (path, map) in args.states.iter().zip([&a, &b]) {
        anyhow::ensure!(
            map.box_size() == n,
            "--states: {} is a map of {}³ voxels, but the particles' box is {n}",
            path.display(),
            map.box_size()
        );
    }
    let pairs = probe::pairs(&a, &b, args.random, args.seed)?;
    let bar = progress.bar(args.steps * pairs.len() as u64, "D steps");
    let mut scores = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let first = i as u64 * args.steps;
        let score = probe::score(
            &config,
            &data,
            pair,
            args.steps,
            dev,
            &mut |s, _| bar.set_position(first + s + 1),
            progress.cancel_flag(),
        )?;
        progress.check_cancelled()?;
        tracing::info!(
            pair = pair.name,
            wasserstein = score.wasserstein,
            standard_error = score.standard_error,
            "pair scored"
        );
        scores.push(score);
    }
    bar.finish_and_clear();
    let ratio = probe::gap_ratio(&scores);
    let doc = serde_json::json!({
        "software": concat!("multicryogan ", env!("CARGO_PKG_VERSION")),
        "particles": args.particles.display().to_string(),
        "states": args.states.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "steps": args.steps,
        "seed": args.seed,
        "critic": "WGAN-GP, the trainer's defaults",
        "pairs": scores,
        "gap_ratio": ratio,
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    mcg_fsio::write_atomic(
        &args.out.join(PROBE_JSON),
        (serde_json::to_string_pretty(&doc)? + "\n").as_bytes(),
    )?;
    if args.json {
        util::print_json(&doc)?;
    } else {
        println!(
            "pair        Wasserstein estimate (second half of {} steps)",
            args.steps
        );
        for s in &scores {
            println!(
                "{:<11} {:.4} ± {:.4}",
                s.name, s.wasserstein, s.standard_error
            );
        }
        match ratio {
            Some(r) => println!(
                "gap ratio (random − truth) / (mean − random): {r:.3} (issue 26 asks ≥ 0.5)"
            ),
            None => println!("gap ratio: needs --random ≥ 1"),
        }
        println!("{}", args.out.join(PROBE_JSON).display());
    }
    Ok(())
}
