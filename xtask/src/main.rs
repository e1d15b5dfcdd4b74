//! `cargo xtask …`: the project's own automation. Everything CI checks runs locally with the same
//! command, and every command installs what it needs first.

mod bench;
mod libtorch;
mod setup;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "\
cargo xtask <command>

commands:
  setup    install what the build needs, if missing: HDF5 and pkg-config (apt), and
           libtorch 2.11.0 from the PyPI wheels into a cache outside the repository
  test     set up, check formatting and lints, then run every test of the workspace
  demo     set up, build, and run the main job: a small Hsp90 data set (structures from
           ../shared when present, the built-in phantom otherwise)
  synth    set up, build, and make the paper's two data sets (100,000 Hsp90 images each,
           continuous and discrete) in out/hsp90-continuous and out/hsp90-discrete;
           extra arguments go to `multicryogan synth` (e.g. --structures DIR, --shards 10)
  train    set up, build, and train Multi-CryoGAN on each data set of `synth` into
           out/<set>/run (25 minutes each by default; resumes a run that has a checkpoint);
           extra arguments go to `multicryogan train` (e.g. --device cuda, --minutes 60)
  report   write out/<set>/report/report.html for each trained run, against its ground truth;
           extra arguments go to `multicryogan report`
  bench    set up, build in release mode, run every benchmark, write bench-results/bench.json
";

/// The paper's two experiments (section 5): data set folder names under out/ and their seeds.
const EXPERIMENTS: [(&str, &str); 2] = [("hsp90-continuous", "1"), ("hsp90-discrete", "2")];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    let rest = &args[1..];
    match command.as_str() {
        "setup" => setup::run(),
        "test" => test(rest),
        "demo" => demo(rest),
        "synth" => synth(rest),
        "train" => train(rest),
        "report" => report(rest),
        "bench" => bench::run(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command {other:?}")
        }
    }
}

/// Formatting and lint checks and every test of the workspace (extra arguments go to `cargo test`),
/// closing with one line that counts them all: `tests: N passed, M failed`.
fn test(rest: &[String]) -> Result<()> {
    setup::run()?;
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ])?;
    let mut args = vec!["test", "--workspace", "--all-targets"];
    args.extend(rest.iter().map(String::as_str));
    let mut counts = util::cargo_test(&args)?;
    // Doc tests run separately: `--all-targets` leaves them out.
    counts.add(util::cargo_test(&["test", "--workspace", "--doc"])?);
    println!(
        "\ntests: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    if counts.failed > 0 || counts.passed == 0 {
        bail!("{} tests failed, {} passed", counts.failed, counts.passed);
    }
    Ok(())
}

/// The main job on an embedded default: a small Hsp90 discrete data set.
fn demo(rest: &[String]) -> Result<()> {
    setup::run()?;
    let bin = release_cli()?;
    let out = util::root().join("out/demo");
    let out_s = out.to_string_lossy().into_owned();
    let mut args = vec![
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        "10000",
        "--seed",
        "1",
        "--out",
        &out_s,
    ];
    args.extend(rest.iter().map(String::as_str));
    util::run(&bin, &args)?;
    util::run(&bin, &["info", &format!("{out_s}/particles.star")])?;
    eprintln!(
        "demo: Hsp90 data set written to {out_s} (particles.mrcs, particles.star, particles.h5, \
         ground_truth/, manifest.json)"
    );
    Ok(())
}

/// The paper's two data sets (section 5): 100,000 images of 32² at 5 Å, CTF 1–2 µm, −10 dB.
fn synth(rest: &[String]) -> Result<()> {
    setup::run()?;
    let bin = release_cli()?;
    for (preset, seed) in EXPERIMENTS {
        let out = util::root().join("out").join(preset);
        let out_s = out.to_string_lossy().into_owned();
        let mut args = vec![
            "synth",
            "--preset",
            preset,
            "--n",
            "100000",
            "--box",
            "32",
            "--apix",
            "5",
            "--snr-db",
            "-10",
            "--defocus-um",
            "1.0:2.0",
            "--seed",
            seed,
            "--out",
            &out_s,
        ];
        args.extend(rest.iter().map(String::as_str));
        util::run(&bin, &args)?;
        eprintln!("synth: {preset} written to {out_s}");
    }
    Ok(())
}

/// Multi-CryoGAN on each of the paper's data sets (made by `cargo xtask synth`).
fn train(rest: &[String]) -> Result<()> {
    setup::run()?;
    let bin = release_cli()?;
    for (set, _) in EXPERIMENTS {
        let data = util::root().join("out").join(set);
        let particles = data.join("particles.star");
        if !particles.is_file() {
            bail!(
                "{} is missing: run `cargo xtask synth` first",
                particles.display()
            );
        }
        let run = data.join("run");
        let (particles_s, run_s) = (
            particles.to_string_lossy().into_owned(),
            run.to_string_lossy().into_owned(),
        );
        let mut args = vec!["train", "--particles", &particles_s, "--out", &run_s];
        if !rest.iter().any(|a| a == "--minutes" || a == "--steps") {
            args.extend(["--minutes", "25"]);
        }
        if run.join("checkpoint.safetensors").is_file() && !rest.iter().any(|a| a == "--resume") {
            eprintln!("train: {run_s} has a checkpoint: resuming it");
            args.push("--resume");
        }
        args.extend(rest.iter().map(String::as_str));
        util::run(&bin, &args)?;
        eprintln!("train: {set} run in {run_s}");
    }
    Ok(())
}

/// The report of each trained run of the paper's experiments, against its ground truth.
fn report(rest: &[String]) -> Result<()> {
    setup::run()?;
    let bin = release_cli()?;
    let mut done = 0;
    for (set, _) in EXPERIMENTS {
        let data = util::root().join("out").join(set);
        let run = data.join("run");
        if !run.join("checkpoint.safetensors").is_file() {
            eprintln!("report: no trained run in {} (skipped)", run.display());
            continue;
        }
        let (data_s, run_s, out_s) = (
            data.to_string_lossy().into_owned(),
            run.to_string_lossy().into_owned(),
            data.join("report").to_string_lossy().into_owned(),
        );
        let mut args = vec![
            "report", "--run", &run_s, "--truth", &data_s, "--out", &out_s,
        ];
        args.extend(rest.iter().map(String::as_str));
        util::run(&bin, &args)?;
        done += 1;
    }
    if done == 0 {
        bail!("no trained run under out/: run `cargo xtask synth` and `cargo xtask train` first");
    }
    Ok(())
}

/// Builds the release CLI and returns its path.
fn release_cli() -> Result<std::path::PathBuf> {
    util::cargo(&["build", "--release", "--bin", "multicryogan"])?;
    Ok(util::root().join("target/release/multicryogan"))
}
