//! `cargo xtask …`: the project's own automation. Everything CI checks runs locally with the same
//! command, and every command installs what it needs first.

#![forbid(unsafe_code)]

mod bench;
mod libtorch;
mod quality;
mod setup;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "\
cargo xtask <command>

commands:
  setup    install what the build needs, if missing: HDF5 and pkg-config (apt), and
           libtorch 2.11.0 from the PyPI wheels into a cache outside the repository
  test     set up, check formatting and lints, then run every test of the workspace
  demo     set up, build, and run the main job: a small Hsp90 discrete data set (structures
           from ../shared when present, the built-in phantom otherwise) and `multicryogan
           reconstruct` on it (--minutes 10, --device auto): the pose-free consensus, the
           classification with the poses marginalised, the Multi-CryoGAN landscape from the
           classes, the reports against the truth, and the numbers that matter
  synth    set up, build, and make the paper's two data sets (100,000 Hsp90 images each,
           continuous and discrete) in out/hsp90-continuous and out/hsp90-discrete;
           extra arguments go to `multicryogan synth` (e.g. --structures DIR, --shards 10)
  train    set up, build, and train Multi-CryoGAN on each data set of `synth` into
           out/<set>/run: the full-scale variant, --device auto, 12 minutes a set (a GPU
           does both in under 30 minutes); resumes a run that has a checkpoint.
           --cpu-budget: the CPU-budget variant instead, --device cpu, 25 minutes a set,
           into out/<set>/run-cpu (another --device beside it is an error).
           Extra arguments go to `multicryogan train`
           (e.g. --device cuda, --minutes 60, --threads 2)
  report   write out/<set>/report/report.html for each trained run, against its ground truth
           (--cpu-budget: the runs in run-cpu, into report-cpu); extra arguments go to
           `multicryogan report`
  bench    set up, build in release mode, run every benchmark, write bench-results/bench.json
           (--quick: a short run).
           Among them the step cost (issue 15): seconds per G step of the default recipe
           (mixture generator, fast step, same batch settings; past the warm start) at
           --boxes 32,64,128 on synthetic sets of 160 Å, median of --timed-steps 6
           (--quick: 3) steps after 2 warm-up steps, with images/s, the train process's
           peak memory and the ratios to the smallest box; on the CPU, and on CUDA where
           nvidia-smi lists a GPU (--device auto, the default; cpu: the CPU only; cuda:
           CUDA too, its failure an error). --step-cost: that part alone (bench.json then
           holds only its figures, with part: step-cost).
           Among them the classification stage: `multicryogan classify` (2 classes, 2 EM
           iterations, all cores) on a 2,000-image (--quick: 1,000) two-state Hsp90 set of
           160 Å at --sizes 32,64,128, from the ground-truth states' mean; seconds of the
           start and per EM iteration, images/s, wall time, the process's peak memory and
           the ratios to the smallest box, on the devices --device picks, and each run
           against the set's truth (π, the share of particles in their true state's class
           under the better of the two labellings, each class map's FSC 0.5 against its
           state). Then, on the smallest box's set, ours with the default settings to
           convergence, timed and scored; beside it, where relion_refine is on the PATH,
           RELION 3.1's 3D classification (the same images and CTFs, the same reference,
           all cores: --K 2 --healpix_order 2 --tau2_fudge 4 --firstiter_cc, --ini_high at
           0.3 of Nyquist, no offset search, 25 iterations, about an hour at 32² on 2
           cores), timed (seconds, and the iteration from which its accuracy stays within
           1 point of the last) and scored the same way; where it is absent or fails,
           classify.json says why. Written to bench-results/classify.json and summed up
           in bench.json. --classify: that part alone (only classify.json is written; with
           --step-cost: both parts).
           --quality: the main job's quality against time instead: runs `multicryogan
           reconstruct --truth` on issue 25's sets (--sets demo,discrete,continuous,adk,
           default demo: 10,000 images, 10 minutes, --seeds 3; discrete and continuous:
           the 100,000-image sets of `synth`, 30 and 45 minutes, the continuous one with
           --landscape continuous --classes 4; adk: 20,000 adenylate
           kinase images at 3 Å made from ../shared/data/structures/adk, 20 minutes),
           scores its classes and its landscape, and writes the time each target was
           first met, each stage's share of the time, the final metrics and a figure per
           set into bench-results/quality/ (--minutes M, --device D; arguments after --
           go to `multicryogan reconstruct`). --pose-free: the paper's path instead,
           `train` in segments of --every 2.5 minutes, each scored with `report`
           (arguments after -- go to `multicryogan train`)
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

/// The main job on an embedded default: a small Hsp90 discrete data set, `multicryogan
/// reconstruct` on it (the pose-free consensus, the classification with the poses
/// marginalised, the Multi-CryoGAN landscape from the classes, and the reports against the
/// truth) within `--minutes` (default 10), closing with the numbers that matter.
/// `--device auto|cpu|cuda` picks where to run; other arguments go to `synth`. Run again, it
/// continues the reconstruction in out/demo/reconstruct at the stage it reached, or, once
/// finished, prints its result again.
fn demo(rest: &[String]) -> Result<()> {
    setup::run()?;
    let mut minutes = "10".to_string();
    let mut device = "auto".to_string();
    let mut synth_extra = Vec::new();
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" | "--device" => {
                let Some(v) = it.next() else {
                    bail!("{a} needs a value");
                };
                if a == "--minutes" {
                    minutes = v.clone();
                } else {
                    device = v.clone();
                }
            }
            _ => synth_extra.push(a.as_str()),
        }
    }
    let bin = release_cli()?;
    let out = util::root().join("out/demo");
    let s = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (out_s, rec_s) = (s(&out), s(&out.join("reconstruct")));
    let star = s(&out.join("particles.star"));
    if out.join("particles.star").is_file() {
        eprintln!("demo: 1/2 the data set is in {out_s} (remove the folder to start over)");
    } else {
        eprintln!(
            "demo: 1/2 synthesising 10,000 Hsp90 images (25 % closed, 75 % open) into {out_s}"
        );
        let mut args = demo_synth_args("1", &out_s);
        args.extend(synth_extra);
        util::run(&bin, &args)?;
    }
    let record = out.join("reconstruct/reconstruct.json");
    let mut args = vec![
        "reconstruct",
        "--particles",
        &star,
        "--out",
        &rec_s,
        "--truth",
        &out_s,
        "--minutes",
        &minutes,
        "--device",
        &device,
    ];
    if record.is_file() {
        eprintln!("demo: {rec_s} holds a reconstruction: continuing it");
        args.push("--resume");
    }
    eprintln!(
        "demo: 2/2 reconstructing within {minutes} minutes ({device}) into {rec_s}: the \
         pose-free consensus, the classification with the poses marginalised, the \
         Multi-CryoGAN landscape from the classes, and the reports"
    );
    util::run(&bin, &args)
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

/// The two ways to run the paper's experiments: the full-scale variant (meant for a GPU) and the
/// CPU-budget variant, each with its own run and report folders so that both can be kept.
#[derive(Debug)]
struct Variant {
    run: &'static str,
    report: &'static str,
    device: &'static str,
    minutes: &'static str,
}

const FULL: Variant = Variant {
    run: "run",
    report: "report",
    device: "auto",
    minutes: "12",
};
const CPU_BUDGET: Variant = Variant {
    run: "run-cpu",
    report: "report-cpu",
    device: "cpu",
    minutes: "25",
};

/// Takes `--cpu-budget` out of the arguments and returns the variant it picks. The CPU-budget
/// variant is a CPU run by definition: a `--device` other than `cpu` beside it is an error.
fn variant(rest: &[String]) -> Result<(&'static Variant, Vec<&str>)> {
    let cpu = rest.iter().any(|a| a == "--cpu-budget");
    let others: Vec<&str> = rest
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--cpu-budget")
        .collect();
    if cpu && let Some(device) = flag_value(&others, "--device").filter(|d| *d != "cpu") {
        bail!(
            "--cpu-budget trains on the CPU, but --device {device} was given; \
             leave out --cpu-budget to train on {device} (into out/<set>/run)"
        );
    }
    Ok((if cpu { &CPU_BUDGET } else { &FULL }, others))
}

/// Whether `args` give the option `name`, as `name VALUE` or `name=VALUE` (or a bare flag).
fn has_flag(args: &[&str], name: &str) -> bool {
    args.iter()
        .any(|a| *a == name || a.strip_prefix(name).is_some_and(|r| r.starts_with('=')))
}

/// The value `args` give the option `name`, in either form; the last one wins, as in clap.
fn flag_value<'a>(args: &[&'a str], name: &str) -> Option<&'a str> {
    let mut value = None;
    for (i, a) in args.iter().enumerate() {
        if *a == name {
            value = args.get(i + 1).copied();
        } else if let Some(v) = a.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            value = Some(v);
        }
    }
    value
}

/// The arguments of `multicryogan train` for one set: the variant's minutes and device unless
/// the user gave their own (`--minutes` or `--steps`; `--device`), `--resume` when the run has a
/// checkpoint and the user did not say it (`--force` when it has none: a fresh run), then the
/// user's arguments.
fn train_args<'a>(
    variant: &'static Variant,
    particles: &'a str,
    run: &'a str,
    has_checkpoint: bool,
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["train", "--particles", particles, "--out", run];
    if !has_flag(rest, "--minutes") && !has_flag(rest, "--steps") {
        args.extend(["--minutes", variant.minutes]);
    }
    if !has_flag(rest, "--device") {
        args.extend(["--device", variant.device]);
    }
    if has_checkpoint && !has_flag(rest, "--resume") {
        args.push("--resume");
    }
    if !has_checkpoint && !has_flag(rest, "--resume") && !has_flag(rest, "--force") {
        // A fresh run; a folder left without a checkpoint holds nothing to continue.
        args.push("--force");
    }
    args.extend(rest.iter().copied());
    args
}

/// Multi-CryoGAN on each of the paper's data sets (made by `cargo xtask synth`).
fn train(rest: &[String]) -> Result<()> {
    setup::run()?;
    let (variant, rest) = variant(rest)?;
    if std::ptr::eq(variant, &FULL) && !has_flag(&rest, "--device") && bench::gpu_names().is_none()
    {
        eprintln!(
            "train: no NVIDIA GPU here, so the full-scale variant will train on the CPU; \
             `cargo xtask train --cpu-budget` is the variant meant for a CPU"
        );
    }
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
        let run = data.join(variant.run);
        let (particles_s, run_s) = (
            particles.to_string_lossy().into_owned(),
            run.to_string_lossy().into_owned(),
        );
        let has_checkpoint = run.join("checkpoint.safetensors").is_file();
        if has_checkpoint {
            eprintln!("train: {run_s} has a checkpoint: resuming it");
        }
        let mut args = train_args(variant, &particles_s, &run_s, has_checkpoint, &rest);
        // The continuous landscape takes the voxel generator (a volume varying with α), the
        // discrete one the default mixture; a fresh run only (a resumed one keeps its own).
        if let Some(g) = generator_for(set)
            && !has_checkpoint
            && !has_flag(&rest, "--generator")
        {
            args.extend(["--generator", g]);
        }
        util::run(&bin, &args)?;
        eprintln!("train: {set} run in {run_s}");
    }
    Ok(())
}

/// `multicryogan synth` arguments for the demo's set (10,000 Hsp90 discrete images, the
/// paper's imaging) with data seed `seed` into `out`; `bench --quality` makes its demo-sized
/// sets with them too.
pub fn demo_synth_args<'a>(seed: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        "10000",
        "--seed",
        seed,
        "--out",
        out,
    ]
}

/// The generator a paper experiment's set takes where it is not the default one.
pub fn generator_for(set: &str) -> Option<&'static str> {
    set.ends_with("continuous").then_some("voxel")
}

/// The report of each trained run of the paper's experiments, against its ground truth.
fn report(rest: &[String]) -> Result<()> {
    setup::run()?;
    let (variant, rest) = variant(rest)?;
    let bin = release_cli()?;
    let mut done = 0;
    for (set, _) in EXPERIMENTS {
        let data = util::root().join("out").join(set);
        let run = data.join(variant.run);
        if !run.join("checkpoint.safetensors").is_file() {
            eprintln!("report: no trained run in {} (skipped)", run.display());
            continue;
        }
        let (data_s, run_s, out_s) = (
            data.to_string_lossy().into_owned(),
            run.to_string_lossy().into_owned(),
            data.join(variant.report).to_string_lossy().into_owned(),
        );
        let mut args = vec![
            "report", "--run", &run_s, "--truth", &data_s, "--out", &out_s,
        ];
        args.extend(rest.iter().copied());
        util::run(&bin, &args)?;
        eprintln!("report: {out_s}/report.html");
        done += 1;
    }
    if done == 0 {
        let flag = if std::ptr::eq(variant, &CPU_BUDGET) {
            " --cpu-budget"
        } else {
            ""
        };
        bail!(
            "no trained run in out/<set>/{}: run `cargo xtask synth` and `cargo xtask train{flag}` first",
            variant.run
        );
    }
    Ok(())
}

/// Builds the release CLI and returns its path.
fn release_cli() -> Result<std::path::PathBuf> {
    util::cargo(&["build", "--release", "--bin", "multicryogan"])?;
    Ok(util::target_dir().join("release/multicryogan"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn train_adds_the_variants_defaults_only_where_the_user_gave_none() {
        let plain = train_args(&FULL, "p.star", "run", false, &[]);
        assert_eq!(
            plain,
            [
                "train",
                "--particles",
                "p.star",
                "--out",
                "run",
                "--minutes",
                "12",
                "--device",
                "auto",
                "--force"
            ]
        );
        let own = train_args(
            &CPU_BUDGET,
            "p.star",
            "run-cpu",
            true,
            &["--steps=5000", "--device", "cpu", "--threads", "2"],
        );
        assert!(!own.contains(&"--minutes"), "{own:?}");
        assert_eq!(own.iter().filter(|a| a.starts_with("--device")).count(), 1);
        assert_eq!(own.iter().filter(|a| **a == "--resume").count(), 1);
        assert_eq!(
            &own[own.len() - 5..],
            ["--steps=5000", "--device", "cpu", "--threads", "2"]
        );
        let resumed = train_args(&FULL, "p", "r", true, &["--resume", "--minutes=60"]);
        assert_eq!(resumed.iter().filter(|a| **a == "--resume").count(), 1);
        assert!(!resumed.contains(&"12"), "{resumed:?}");
    }

    #[test]
    fn cpu_budget_picks_its_folders_and_refuses_another_device() {
        let given = strings(&["--cpu-budget", "--threads", "2"]);
        let (v, rest) = variant(&given).unwrap();
        assert_eq!((v.run, v.device, v.minutes), ("run-cpu", "cpu", "25"));
        assert_eq!(rest, ["--threads", "2"]);
        let (v, _) = variant(&strings(&["--device", "cuda"])).unwrap();
        assert_eq!(v.run, "run");
        assert!(variant(&strings(&["--cpu-budget", "--device", "cpu"])).is_ok());
        for bad in [
            ["--cpu-budget", "--device", "cuda"].as_slice(),
            &["--device=cuda", "--cpu-budget"],
        ] {
            let err = variant(&strings(bad)).unwrap_err().to_string();
            assert!(err.contains("--device cuda"), "{err}");
        }
    }

    #[test]
    fn flags_are_found_in_both_forms() {
        assert!(has_flag(&["--device=cuda"], "--device"));
        assert!(has_flag(&["--device", "cuda"], "--device"));
        assert!(!has_flag(&["--devices", "x"], "--device"));
        assert_eq!(
            flag_value(&["--device", "cpu", "--device=cuda"], "--device"),
            Some("cuda")
        );
        assert_eq!(flag_value(&["--threads", "2"], "--device"), None);
    }
}
