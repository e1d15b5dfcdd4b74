//! `multicryogan`: the command-line program. Thin: each subcommand parses its flags into the
//! library crates' settings and calls them. Results go to stdout, logs and progress to stderr.

// `deny`, not `forbid`: ndarray's `s!` macro expands to an `allow(unsafe_code)`.
#![deny(unsafe_code)]

mod align;
mod classify;
mod convert;
mod ctf;
mod fsc;
mod info;
mod probe;
mod progress;
mod project;
mod reconstruct;
mod report;
mod sample;
mod synth;
mod train;
mod util;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mcg_dataset::monitor::Monitor as _;

/// Reconstruct the conformations of a flexible molecule from cryo-EM images with Multi-CryoGAN,
/// and make, inspect and convert the data it works on.
#[derive(Debug, Parser)]
#[command(name = "multicryogan", version, propagate_version = true)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors on stderr; no progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Say what a file holds: MRC map or stack, STAR or cryoSPARC .cs particle table, HDF5
    /// particle set, or a .txt list of stacks.
    Info(info::Args),
    /// Convert a particle set between STAR+MRCS, the HDF5 container and (input only)
    /// cryoSPARC .cs, keeping images bit-exact and metadata complete.
    Convert(convert::Args),
    /// Fourier-crop a particle set to a smaller box (like cryoDRGN's downsample): the
    /// frequencies below the new Nyquist are kept, the pixel size grows by the ratio.
    Downsample(convert::DownsampleArgs),
    /// Simulate particle images of a volume, like relion_project: one image per row of a STAR
    /// file (its poses, shifts and CTFs), or N images at random poses.
    Project(project::Args),
    Synth(Box<synth::Args>),
    MergeShards(synth::MergeArgs),
    Train(Box<train::Args>),
    /// Volumes along a trained run's latent segment (α = 0 … 1) and a ChimeraX script that
    /// plays them as a movie.
    Sample(sample::Args),
    Classify(Box<classify::Args>),
    Reconstruct(Box<reconstruct::Args>),
    CriticProbe(probe::Args),
    Report(report::Args),
    Validate(validate::Args),
    /// Write each particle's 2D CTF (zero frequency at pixel N/2) as an MRC stack.
    Ctf(ctf::Args),
    /// Fourier shell correlation of two maps: the curve, the resolution at FSC 0.5 and 0.143,
    /// and AreaFSC.
    Fsc(fsc::Args),
    /// Align a map to a reference over rotations, both hands and translations, and write the
    /// aligned map.
    Align(align::Args),
}

fn main() -> ExitCode {
    util::quiet_on_closed_pipe();
    let cli = Cli::parse();
    util::init_logging(cli.verbose, cli.quiet);
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    util::install_interrupt_handler(std::sync::Arc::clone(&cancel));
    let progress = progress::Progress::new(cli.quiet, cancel);
    let result = match cli.command {
        Command::Info(a) => info::run(a),
        Command::Convert(a) => convert::run(a, &progress),
        Command::Downsample(a) => convert::run_downsample(a, &progress),
        Command::Project(a) => project::run(a, &progress),
        Command::Ctf(a) => ctf::run(a, &progress),
        Command::Synth(a) => synth::run(*a, &progress),
        Command::MergeShards(a) => synth::run_merge(a, &progress),
        Command::Train(a) => train::run(*a, &progress),
        Command::Sample(a) => sample::run(a, &progress),
        Command::Classify(a) => classify::run(*a, &progress),
        Command::Reconstruct(a) => reconstruct::run(*a, &progress),
        Command::CriticProbe(a) => probe::run(a, &progress),
        Command::Report(a) => report::run(a, &progress),
        Command::Validate(a) => validate::run(a, &progress),
        Command::Fsc(a) => fsc::run(a),
        Command::Align(a) => align::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if util::is_closed_pipe(&e) => ExitCode::from(util::CLOSED_PIPE_STATUS),
        Err(e) => {
            util::print_error(&e);
            if progress.cancelled() {
                ExitCode::from(util::INTERRUPTED_STATUS)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
