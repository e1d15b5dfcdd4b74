//! `multicryogan report`: the flags of [`mcg_report::report`], which judges a trained run the
//! paper's way and shows it at a glance.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use mcg_report::{ReportSettings, report};
use mcg_train::device::DeviceChoice;

use crate::progress::Progress;
use crate::util;

/// Report on a training run: training curves, real and simulated images, slices and
/// projections along the latent segment, and, with --truth (a `multicryogan synth` folder), the
/// paper's measures against the ground truth: the reconstruction is aligned once to the truth
/// (rotation, hand, shift), then the FSC of each end of the latent segment against its ground-
/// truth conformation (resolution at 0.5 and 0.143), the FSCCC matrices (L = 20) of the
/// reconstruction and of the truth side by side, and for a discrete landscape the probability
/// of each conformation by the paper's rule (each of L cells of the segment belongs to the end
/// it resembles by AreaFSC), for a continuous one the recovered β(α) curve and the Wasserstein-1
/// distance (degrees) between the recovered and the true distribution of β. With --history N,
/// also the FSC resolution of up to N checkpoint snapshots against training time.
///
/// On a `multicryogan classify` folder (its model.json), with --truth: each class map aligned
/// on its own to each state, classes matched to states by AreaFSC, each class's FSC against its
/// state, π against the true shares, the particles' accuracy and the EM history. The same for
/// a RELION 3D classification, given by its run_itNNN_model.star (the class maps beside it, the
/// particles' classes in run_itNNN_data.star, the history from the earlier iterations' files;
/// the particles in the truth's order), so that RELION's classes are judged by the same code.
///
/// Writes OUT/report.html (figures embedded; it opens with the result — each end's resolution,
/// the probabilities or β(α), the FSCCC matrices beside the truth's, slices along the landscape
/// — and keeps the evidence below: FSC curves, training curves, images, quality over time), the
/// figures as PNG files, and OUT/metrics.json with every number shown.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:\n  \
    multicryogan report --run run --truth hsp90-discrete --out run/report\n  \
    multicryogan report --run run --out run/report\n  \
    multicryogan report --run cls --truth hsp90-discrete --out cls/report\n  \
    multicryogan report --run Class3D/job012/run_it025_model.star --truth hsp90-discrete --out relion-report\n  \
    multicryogan report --run run_half1 --half-set run_half2 --out run_half1/report")]
pub struct Args {
    /// The run folder of `multicryogan train`, a `multicryogan classify` folder, or a RELION
    /// 3D classification's run_itNNN_model.star.
    #[arg(long, value_name = "DIR|MODEL.STAR")]
    run: PathBuf,
    /// The data set's folder from `multicryogan synth` (ground_truth/, landscape.json,
    /// particles.star): enables the comparisons with the truth.
    #[arg(long, value_name = "DIR")]
    truth: Option<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// L: the FSCCC matrix is (L + 1) × (L + 1) at α = m/L, and probabilities count L cells.
    #[arg(long, default_value_t = 20)]
    l: usize,
    /// Checkpoint snapshots (RUN/volumes/step_*) to measure against the truth over training
    /// time, evenly chosen; 0: none.
    #[arg(long, default_value_t = 8)]
    history: usize,
    /// The run of the other half set (trained on the other half of the particles): adds the
    /// gold-standard half-set validation of `multicryogan validate` (the FSC between matched
    /// conformations of the two runs, their FSCCC matrices and probabilities) to the page and
    /// to metrics.json (`half_set`).
    #[arg(long, value_name = "DIR")]
    half_set: Option<PathBuf>,
    /// cpu, cuda or auto (the GPU when one is usable) for sampling the generator.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Print metrics.json on stdout as well.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, progress: &Progress) -> Result<()> {
    let settings = ReportSettings {
        run: args.run,
        truth: args.truth,
        out: args.out,
        l: args.l,
        history: args.history,
        device: args.device,
        half_set: args.half_set,
    };
    let metrics = report(&settings, progress)?;
    if args.json {
        util::print_json(&serde_json::to_value(&metrics)?)?;
    } else {
        println!("{}", settings.out.join("report.html").display());
    }
    Ok(())
}
