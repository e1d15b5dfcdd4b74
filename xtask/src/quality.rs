//! `cargo xtask bench --quality`: the main job's quality against time on issue 25's sets, with
//! the time at which each target was first met and each stage's share of the time.
//!
//! By default each run is `multicryogan reconstruct --truth` with the set's time limit as its
//! budget: the pose-free consensus, the classification with the poses marginalised, the
//! Multi-CryoGAN landscape, the reports. Its points are the class maps (dated at the end of
//! the classification) and the landscape (dated at its end), the dates being the stages' own
//! wall seconds from `reconstruct.json` (the reports' time is left out of the dates and shown
//! in the stages' shares). `--pose-free` measures the paper's path instead: `train` in
//! segments of `--every` minutes, scored after each with `report`, dated by the training clock.
//!
//! Everything goes to `bench-results/quality/`: per run its data (the demo-sized and adenylate
//! kinase sets), its reconstruction or run folder; `quality.json` with every point, the first
//! time each target was met, whether that was within the time limit, the stages' times and
//! the final metrics; one SVG figure per set.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mcg_runfiles::Metrics;
use mcg_runfiles::metrics::Classification;
use mcg_runfiles::reconstruct::{CLASSIFY, LANDSCAPE, RECORD, REPORT, read_record};
use serde_json::{Value, json};

use crate::util;

/// The sets `--sets` takes.
const SETS: [&str; 4] = ["demo", "discrete", "continuous", "adk"];

/// A target on one metric of a report point.
struct Target {
    name: &'static str,
    /// Whether a point meets it.
    met: fn(&Point) -> bool,
}

/// The numbers of one scored result, at a time.
#[derive(Debug, Clone, Default)]
struct Point {
    /// What was scored: `classes` (the classification's maps and π), `landscape` (the
    /// Multi-CryoGAN landscape's ends and probabilities) or `train` (a pose-free run).
    stage: &'static str,
    minutes: f64,
    /// Generator steps (`train` and `landscape`; 0 for the classes).
    step: u64,
    /// FSC 0.5 of the two ends (the α = 0 and α = 1 ends, or the classes matched to the
    /// first and second states) against their states, fraction of Nyquist (0 when the curve
    /// never crosses 0.5, or when no class matches the state).
    fsc0: f64,
    fsc1: f64,
    /// Discrete: |recovered − true| fraction of each end's state, and the transition fraction
    /// (for classes: the π of classes matched to no state).
    p_err0: Option<f64>,
    p_err1: Option<f64>,
    transition: Option<f64>,
    /// Continuous: FSCCC mean absolute difference and β(α)'s Wasserstein-1 (degrees).
    fsccc: Option<f64>,
    w1: Option<f64>,
    /// Classes: the share of particles in their true class.
    accuracy: Option<f64>,
}

/// An FSC 0.5 crossing as a fraction of Nyquist, where none (`None`) means that the curve
/// stays above 0.5 to the last shell: the maps agree to Nyquist, so 1. (Until session 15 this
/// was taken as 0, and the 100,000-image set's landscape end that agreed to Nyquist, AreaFSC
/// 0.95, was scored as missing its target.)
fn beyond_nyquist(crossing: Option<f64>) -> f64 {
    crossing.unwrap_or(1.0)
}

impl Point {
    fn from_report(stage: &'static str, minutes: f64, step: u64, m: &Metrics) -> Self {
        let nyquist = |e: &mcg_runfiles::metrics::EndFsc| {
            beyond_nyquist(e.fsc.resolution_nyquist_fraction.half)
        };
        let p = m.probabilities.as_ref();
        let err = |fraction: f64, truth: Option<f64>| Some((fraction - truth?).abs());
        Self {
            stage,
            minutes,
            step,
            fsc0: m.fsc_ends.as_ref().map_or(0.0, |e| nyquist(&e.alpha_0)),
            fsc1: m.fsc_ends.as_ref().map_or(0.0, |e| nyquist(&e.alpha_1)),
            p_err0: p.and_then(|p| err(p.alpha_0_fraction, p.truth.alpha_0_state)),
            p_err1: p.and_then(|p| err(p.alpha_1_fraction, p.truth.alpha_1_state)),
            transition: p.map(|p| p.transition),
            fsccc: m.fsccc.as_ref().and_then(|f| f.mean_abs_difference),
            // null (NaN) when there are no particles' values, as the JSON reading gave None.
            w1: m
                .continuous
                .as_ref()
                .map(|c| c.wasserstein1)
                .filter(|w| !w.is_nan()),
            accuracy: None,
        }
    }

    /// The class maps of a classification's report: the class matched to each of the first
    /// two states is that end.
    fn from_classes(minutes: f64, c: &Classification) -> Self {
        let state = |i: usize| {
            let name = c.states.get(i)?;
            c.proportions.iter().find(|p| &p.state == name)
        };
        let fsc = |i: usize| {
            let class = state(i)?.class?;
            let score = c.per_class.iter().find(|s| s.class == class)?;
            Some(beyond_nyquist(
                score.fsc.as_ref()?.resolution_nyquist_fraction.half,
            ))
        };
        let err = |i: usize| {
            let p = state(i)?;
            Some((p.pi - p.true_fraction?).abs())
        };
        let matched: f64 = (0..c.states.len())
            .filter_map(|i| state(i).filter(|p| p.class.is_some()).map(|p| p.pi))
            .sum();
        Self {
            stage: "classes",
            minutes,
            step: 0,
            fsc0: fsc(0).unwrap_or(0.0),
            fsc1: fsc(1).unwrap_or(0.0),
            p_err0: err(0),
            p_err1: err(1),
            transition: Some((1.0 - matched).max(0.0)),
            fsccc: None,
            w1: None,
            accuracy: c.accuracy,
        }
    }

    fn json(&self) -> Value {
        json!({
            "stage": self.stage, "minutes": self.minutes, "step": self.step,
            "fsc_0.5_alpha_0_nyquist": self.fsc0, "fsc_0.5_alpha_1_nyquist": self.fsc1,
            "probability_error_alpha_0": self.p_err0, "probability_error_alpha_1": self.p_err1,
            "transition": self.transition, "fsccc_mean_abs_difference": self.fsccc,
            "wasserstein1_deg": self.w1, "accuracy": self.accuracy,
        })
    }
}

fn within(v: Option<f64>, limit: f64) -> bool {
    v.is_some_and(|v| v <= limit)
}

/// Issue 25's time limit for each set, minutes: the default budget.
fn limit_minutes(set: &str) -> f64 {
    match set {
        "demo" => 10.0,
        "discrete" => 30.0,
        "continuous" => 45.0,
        _ => 20.0,
    }
}

/// The FSC 0.5 (fraction of Nyquist) issue 25 asks of both ends, for each set.
fn fsc_target(set: &str) -> f64 {
    if set == "discrete" { 0.70 } else { 0.50 }
}

/// The largest probability error issue 25 allows, for each discrete set.
fn probability_target(set: &str) -> f64 {
    if set == "discrete" { 0.02 } else { 0.03 }
}

/// Issue 25's targets for each set (its time limit is [`limit_minutes`]).
fn targets(set: &str) -> Vec<Target> {
    match set {
        "demo" => vec![
            Target {
                name: "probabilities within 3 points, transition < 5 %",
                met: |p| {
                    within(p.p_err0, 0.03) && within(p.p_err1, 0.03) && p.transition < Some(0.05)
                },
            },
            Target {
                name: "both ends FSC 0.5 >= 0.50 of Nyquist",
                met: |p| p.fsc0 >= 0.50 && p.fsc1 >= 0.50,
            },
        ],
        "discrete" => vec![
            Target {
                name: "probabilities within 2 points, transition < 5 %",
                met: |p| {
                    within(p.p_err0, 0.02) && within(p.p_err1, 0.02) && p.transition < Some(0.05)
                },
            },
            Target {
                name: "both ends FSC 0.5 >= 0.70 of Nyquist",
                met: |p| p.fsc0 >= 0.70 && p.fsc1 >= 0.70,
            },
        ],
        "adk" => vec![
            Target {
                name: "probabilities within 3 points",
                met: |p| within(p.p_err0, 0.03) && within(p.p_err1, 0.03),
            },
            Target {
                name: "both ends FSC 0.5 >= 0.50 of Nyquist",
                met: |p| p.fsc0 >= 0.50 && p.fsc1 >= 0.50,
            },
        ],
        _ => vec![
            Target {
                name: "FSCCC mean absolute difference <= 0.05",
                met: |p| within(p.fsccc, 0.05),
            },
            Target {
                name: "beta(alpha) Wasserstein-1 <= 2 degrees",
                met: |p| within(p.w1, 2.0),
            },
            Target {
                name: "both ends FSC 0.5 >= 0.50 of Nyquist",
                met: |p| p.fsc0 >= 0.50 && p.fsc1 >= 0.50,
            },
        ],
    }
}

/// Settings of a quality run, from the command line.
#[derive(Debug, Clone)]
struct Options {
    sets: Vec<String>,
    seeds: u64,
    minutes: Option<f64>,
    every: f64,
    device: String,
    /// The paper's pure pose-free path (`train` in segments) instead of `reconstruct`.
    pose_free: bool,
    /// Arguments for `multicryogan reconstruct` (or `train` with `--pose-free`).
    extra: Vec<String>,
}

fn parse(rest: &[String]) -> Result<Options> {
    let mut o = Options {
        sets: vec!["demo".into()],
        seeds: 3,
        minutes: None,
        every: 2.5,
        device: "auto".into(),
        pose_free: false,
        extra: Vec::new(),
    };
    let mut it = rest.iter().filter(|a| *a != "--quality");
    while let Some(a) = it.next() {
        if a == "--" {
            o.extra = it.cloned().collect();
            break;
        }
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--sets" => {
                o.sets = value()?.split(',').map(str::to_string).collect();
                for s in &o.sets {
                    if !SETS.contains(&s.as_str()) {
                        bail!("--sets: unknown set {s:?}: expected {}", SETS.join(", "));
                    }
                }
            }
            "--seeds" => o.seeds = value()?.parse().context("--seeds: expected a count")?,
            "--minutes" => {
                o.minutes = Some(value()?.parse().context("--minutes: expected a number")?);
            }
            "--every" => o.every = value()?.parse().context("--every: expected minutes")?,
            "--device" => o.device = value()?,
            "--pose-free" => o.pose_free = true,
            other => bail!(
                "bench --quality: unknown argument {other:?} (arguments for `multicryogan \
                 reconstruct`, or `train` with --pose-free, go after --)"
            ),
        }
    }
    anyhow::ensure!(o.every > 0.0, "--every must be positive");
    anyhow::ensure!(o.seeds > 0, "--seeds must be at least 1");
    if let Some(m) = o.minutes {
        anyhow::ensure!(m > 0.0, "--minutes must be positive");
    }
    Ok(o)
}

/// A run's points and each stage's name and wall seconds.
type Scored = (Vec<Point>, Vec<(String, f64)>);

/// One run's result.
struct RunResult {
    set: String,
    seed: u64,
    budget: f64,
    points: Vec<Point>,
    /// Each stage's name and wall seconds (`train` alone for a pose-free run).
    stages: Vec<(String, f64)>,
}

pub fn run(bin: &Path, rest: &[String]) -> Result<()> {
    let o = parse(rest)?;
    let root = util::root();
    let base = root.join("bench-results/quality");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let mut results = Vec::new();
    for set in &o.sets {
        // The demo-sized row runs every seed (data and reconstruction); each other set once.
        let seeds: Vec<u64> = if set == "demo" {
            (1..=o.seeds).collect()
        } else {
            vec![0]
        };
        let budget = o.minutes.unwrap_or_else(|| limit_minutes(set));
        for seed in seeds {
            let dir = base.join(format!("{set}-seed{seed}"));
            let Some(data) = data_set(bin, set, seed, &dir)? else {
                continue;
            };
            let (points, stages) = if o.pose_free {
                train_and_score(bin, &o, &data, &dir, seed, budget)?
            } else {
                reconstruct_and_score(bin, &o, set, &data, &dir, budget)?
            };
            results.push(RunResult {
                set: set.clone(),
                seed,
                budget,
                points,
                stages,
            });
            write_results(&base, &o, &results)?;
        }
    }
    print_summary(&results);
    println!("written: {}", base.join("quality.json").display());
    Ok(())
}

/// The adenylate kinase structures (closed and open), beside the project.
fn adk_structures() -> PathBuf {
    util::root().join("../shared/data/structures/adk")
}

/// The data set folder of a run: a fresh 10,000-image discrete set for the demo row (data
/// seed = `seed`); issue 25's adenylate kinase set (30 % closed, 70 % open, 20,000 images of
/// 32² at 3 Å), when its structures are beside the project (else `None`, said); else the
/// paper's set from `cargo xtask synth`.
fn data_set(bin: &Path, set: &str, seed: u64, dir: &Path) -> Result<Option<PathBuf>> {
    let data = dir.join("data");
    let made = data.join("particles.star").is_file();
    match set {
        "demo" => {
            if !made {
                let (seed, out) = (seed.to_string(), data.to_string_lossy().into_owned());
                let mut args = crate::demo_synth_args(&seed, &out);
                args.push("--quiet");
                util::run(bin, &args)?;
            }
            Ok(Some(data))
        }
        "adk" => {
            let structures = adk_structures();
            if !made {
                if !structures.join("adk_closed.pdb").is_file() {
                    eprintln!(
                        "quality: adk skipped: {} is absent (the adenylate kinase structures \
                         ship beside the project, not in it)",
                        structures.display()
                    );
                    return Ok(None);
                }
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let landscape = dir.join("adk-landscape.json");
                let text = json!({
                    "name": "adk",
                    "structures": [], "bodies": [], "motions": [], "parameters": [],
                    "discrete_models": [
                        {"name": "closed", "path": "adk_closed.pdb", "weight": 0.3},
                        {"name": "open", "path": "adk_open.pdb", "weight": 0.7},
                    ],
                });
                util::write_atomic(&landscape, (text.to_string() + "\n").as_bytes())?;
                let (seed, out, landscape, structures) = (
                    (seed + 1).to_string(),
                    data.to_string_lossy().into_owned(),
                    landscape.to_string_lossy().into_owned(),
                    structures.to_string_lossy().into_owned(),
                );
                util::run(
                    bin,
                    &[
                        "synth",
                        "--landscape",
                        &landscape,
                        "--structures",
                        &structures,
                        "--n",
                        "20000",
                        "--box",
                        "32",
                        "--apix",
                        "3",
                        "--seed",
                        &seed,
                        "--out",
                        &out,
                        "--quiet",
                    ],
                )?;
            }
            Ok(Some(data))
        }
        _ => {
            let data = util::root().join(format!("out/hsp90-{set}"));
            if !data.join("particles.star").is_file() {
                bail!(
                    "{} is missing: run `cargo xtask synth` first",
                    data.join("particles.star").display()
                );
            }
            Ok(Some(data))
        }
    }
}

/// Runs `multicryogan reconstruct --truth` with `budget` minutes (continuing a folder it
/// finds), and scores its classes and its landscape from their reports.
fn reconstruct_and_score(
    bin: &Path,
    o: &Options,
    set: &str,
    data: &Path,
    dir: &Path,
    budget: f64,
) -> Result<Scored> {
    let rec = dir.join("rec");
    let (rec_s, star_s, data_s, budget_s) = (
        rec.to_string_lossy().into_owned(),
        data.join("particles.star").to_string_lossy().into_owned(),
        data.to_string_lossy().into_owned(),
        format!("{budget}"),
    );
    let mut args = vec![
        "reconstruct",
        "--particles",
        &star_s,
        "--out",
        &rec_s,
        "--minutes",
        &budget_s,
        "--truth",
        &data_s,
        "--device",
        &o.device,
        "--quiet",
    ];
    if rec.join(RECORD).is_file() {
        args.push("--resume");
    }
    // The continuous set's landscape is a path through its classes (four of them, the
    // continuum's default), unless the arguments say otherwise.
    let given = |flag: &str| {
        o.extra
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    if set == "continuous" && !given("--landscape") {
        args.extend(["--landscape", "continuous"]);
    }
    args.extend(o.extra.iter().map(String::as_str));
    util::run(bin, &args)?;
    let (points, stages) = score_reconstruction(&rec)?;
    for p in &points {
        log_point(dir, p);
    }
    Ok((points, stages))
}

/// The points of a reconstruction folder `rec` (its classes and its landscape, from their
/// reports) and its stages' wall seconds.
fn score_reconstruction(rec: &Path) -> Result<Scored> {
    let record = read_record(rec)?;
    let stages: Vec<(String, f64)> = record
        .stages
        .iter()
        .map(|s| (s.name.clone(), s.seconds))
        .collect();
    // A stage's point is dated at the wall time of every stage up to its end.
    let minutes_to = |name: &str| {
        let end = record.stages.iter().position(|s| s.name == name)?;
        Some(record.stages[..=end].iter().map(|s| s.seconds).sum::<f64>() / 60.0)
    };
    let mut points = Vec::new();
    if let Some(minutes) = minutes_to(CLASSIFY) {
        let m = read_report(&rec.join(CLASSIFY).join(REPORT))?;
        let c = m.classification.as_ref().with_context(|| {
            format!(
                "{}: the classification's report has no classes",
                rec.display()
            )
        })?;
        points.push(Point::from_classes(minutes, c));
    }
    if let Some(minutes) = minutes_to(LANDSCAPE) {
        let m = read_report(&rec.join(REPORT))?;
        // The step of the maps kept (the best-scored checkpoint), else the last trained.
        let steps = record
            .stage(LANDSCAPE)
            .and_then(|s| {
                s.outcome
                    .get("kept_step")
                    .and_then(Value::as_u64)
                    .or_else(|| s.outcome.get("steps").and_then(Value::as_u64))
            })
            .unwrap_or(0);
        points.push(Point::from_report("landscape", minutes, steps, &m));
    }
    Ok((points, stages))
}

/// A report's `metrics.json` in `report`.
fn read_report(report: &Path) -> Result<Metrics> {
    let path = report.join("metrics.json");
    serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not a report's metrics.json", path.display()))
}

fn log_point(dir: &Path, p: &Point) {
    eprintln!(
        "quality: {}: {} at {:.1} min{}, FSC 0.5 ends {:.3} / {:.3}{}{}{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        p.stage,
        p.minutes,
        if p.step > 0 {
            format!(" (step {})", p.step)
        } else {
            String::new()
        },
        p.fsc0,
        p.fsc1,
        p.p_err0
            .zip(p.p_err1)
            .map(|(a, b)| format!(", probability errors {a:.3} / {b:.3}"))
            .unwrap_or_default(),
        p.accuracy
            .map(|a| format!(", {:.1} % right", 100.0 * a))
            .unwrap_or_default(),
        p.fsccc
            .map(|f| format!(", FSCCC {f:.3}"))
            .unwrap_or_default()
            + &p.w1
                .filter(|w| w.is_finite())
                .map(|w| format!(", W1 {w:.2}°"))
                .unwrap_or_default()
    );
}

/// The paper's pure pose-free path: trains in segments up to `budget` minutes of training,
/// scoring after each.
fn train_and_score(
    bin: &Path,
    o: &Options,
    data: &Path,
    dir: &Path,
    seed: u64,
    budget: f64,
) -> Result<Scored> {
    let run = dir.join("run");
    let report = dir.join("report");
    let star = data.join("particles.star");
    let (run_s, report_s, star_s, data_s) = (
        run.to_string_lossy().into_owned(),
        report.to_string_lossy().into_owned(),
        star.to_string_lossy().into_owned(),
        data.to_string_lossy().into_owned(),
    );
    let mut points = Vec::new();
    let mut minutes = trained_minutes(&run);
    let seed_s = seed.to_string();
    while minutes < budget - 1e-6 {
        let segment = format!("{:.4}", o.every.min(budget - minutes));
        let mut args = vec![
            "train",
            "--particles",
            &star_s,
            "--out",
            &run_s,
            "--minutes",
            &segment,
            "--device",
            &o.device,
            "--quiet",
        ];
        if run.join("checkpoint.safetensors").is_file() {
            args.push("--resume");
        } else {
            // A fresh run; a folder left without a checkpoint holds nothing to continue.
            args.extend(["--force", "--seed", &seed_s]);
            if let Some(g) = crate::generator_for(&data_s)
                && !o.extra.iter().any(|a| a == "--generator")
            {
                args.extend(["--generator", g]);
            }
            args.extend(o.extra.iter().map(String::as_str));
        }
        util::run(bin, &args)?;
        let (now, step) = last_time_and_step(&run)?;
        anyhow::ensure!(
            now > minutes,
            "{}: the training clock did not advance",
            run.display()
        );
        minutes = now;
        util::run(
            bin,
            &[
                "report",
                "--run",
                &run_s,
                "--truth",
                &data_s,
                "--out",
                &report_s,
                "--history",
                "0",
                "--device",
                &o.device,
                "--quiet",
            ],
        )?;
        let p = Point::from_report("train", minutes, step, &read_report(&report)?);
        log_point(dir, &p);
        points.push(p);
    }
    Ok((points, vec![("train".into(), minutes * 60.0)]))
}

fn trained_minutes(run: &Path) -> f64 {
    last_time_and_step(run).map_or(0.0, |(m, _)| m)
}

fn last_time_and_step(run: &Path) -> Result<(f64, u64)> {
    let lines = mcg_runfiles::read_metrics(run).unwrap_or_default();
    let last = lines.last().with_context(|| {
        format!(
            "{}: no metrics",
            mcg_runfiles::RunDir::new(run).metrics().display()
        )
    })?;
    let time = if last.time.is_finite() {
        last.time
    } else {
        0.0
    };
    Ok((time / 60.0, last.step))
}

/// The first point of a run that meets `t`.
fn first_met<'a>(points: &'a [Point], t: &Target) -> Option<&'a Point> {
    points.iter().find(|p| (t.met)(p))
}

fn write_results(base: &Path, o: &Options, results: &[RunResult]) -> Result<()> {
    let runs: Vec<Value> = results
        .iter()
        .map(|r| {
            let limit = limit_minutes(&r.set);
            let met: Vec<Value> = targets(&r.set)
                .iter()
                .map(|t| {
                    let first = first_met(&r.points, t);
                    json!({
                        "target": t.name,
                        "first_met_minutes": first.map(|p| p.minutes),
                        "first_met_by": first.map(|p| p.stage),
                        "first_met_step": first.map(|p| p.step),
                        "within_time_limit": first.is_some_and(|p| p.minutes <= limit),
                        "met_at_end": r.points.last().is_some_and(|p| (t.met)(p)),
                    })
                })
                .collect();
            let total: f64 = r.stages.iter().map(|(_, s)| s).sum();
            let stages: Vec<Value> = r
                .stages
                .iter()
                .map(|(name, s)| {
                    json!({"stage": name, "seconds": s,
                           "share": if total > 0.0 { s / total } else { 0.0 }})
                })
                .collect();
            json!({
                "set": r.set, "seed": r.seed, "budget_minutes": r.budget,
                "time_limit_minutes": limit, "total_seconds": total,
                "stages": stages,
                "targets": met,
                "final": r.points.last().map(Point::json),
                "points": r.points.iter().map(Point::json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({
        "machine": crate::bench::machine(),
        "device": o.device,
        "path": if o.pose_free { "pose-free (train)" } else { "reconstruct" },
        "every_minutes": o.pose_free.then_some(o.every),
        "arguments": o.extra,
        "runs": runs,
    });
    util::write_atomic(
        &base.join("quality.json"),
        (serde_json::to_string_pretty(&doc)? + "\n").as_bytes(),
    )?;
    for set in SETS {
        let of_set: Vec<&RunResult> = results.iter().filter(|r| r.set == set).collect();
        if !of_set.is_empty() {
            util::write_atomic(
                &base.join(format!("quality-{set}.svg")),
                figure(set, &of_set).as_bytes(),
            )?;
        }
    }
    Ok(())
}

fn print_summary(results: &[RunResult]) {
    println!("\nquality against time (first time each target was met):");
    for r in results {
        let total: f64 = r.stages.iter().map(|(_, s)| s).sum();
        let shares: Vec<String> = r
            .stages
            .iter()
            .map(|(name, s)| format!("{name} {:.0} s ({:.0} %)", s, 100.0 * s / total.max(1e-9)))
            .collect();
        println!(
            "  {:<10} seed {}  {:.1} min: {}",
            r.set,
            r.seed,
            total / 60.0,
            shares.join(", ")
        );
        let limit = limit_minutes(&r.set);
        for t in targets(&r.set) {
            let first = first_met(&r.points, &t);
            println!(
                "  {:<10} seed {}  {:<52} {}",
                r.set,
                r.seed,
                t.name,
                first.map_or(format!("not met in {:.0} min", r.budget), |p| format!(
                    "{:.1} min ({}){}",
                    p.minutes,
                    p.stage,
                    if p.minutes <= limit {
                        String::new()
                    } else {
                        format!(", over the {limit:.0}-minute limit")
                    }
                ))
            );
        }
    }
}

/// Panels of quality against time for one set, a line per seed, the target dashed.
fn figure(set: &str, runs: &[&RunResult]) -> String {
    type Get = fn(&Point) -> Option<f64>;
    let mut panels: Vec<(&str, Get, f64)> = vec![(
        "FSC 0.5 of the worse end (fraction of Nyquist)",
        |p| Some(p.fsc0.min(p.fsc1)),
        fsc_target(set),
    )];
    if set == "continuous" {
        panels.push(("FSCCC mean absolute difference", |p| p.fsccc, 0.05));
        panels.push(("β(α) Wasserstein-1 (degrees)", |p| p.w1, 2.0));
    } else {
        panels.push((
            "worse probability error",
            |p| Some(p.p_err0?.max(p.p_err1?)),
            probability_target(set),
        ));
    }
    let (w, h, pad) = (420.0, 300.0, 50.0);
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
        w * panels.len() as f64,
        h + 20.0
    );
    let t_max = runs.iter().map(|r| r.budget).fold(1.0f64, f64::max);
    for (i, (title, get, target)) in panels.iter().enumerate() {
        let x0 = i as f64 * w;
        let values: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.points.iter().filter_map(get))
            .filter(|v| v.is_finite())
            .collect();
        let y_max = values.iter().copied().fold(*target * 1.5, f64::max);
        let sx = |t: f64| x0 + pad + (w - 1.5 * pad) * t / t_max;
        let sy = |v: f64| h - pad + 20.0 - (h - 1.5 * pad) * v / y_max;
        svg += &format!(
            r#"<text x="{}" y="16">{set}: {title}</text><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
            x0 + pad,
            sx(0.0),
            sy(0.0),
            sx(t_max),
            sy(0.0),
            sx(0.0),
            sy(0.0),
            sx(0.0),
            sy(y_max)
        );
        for k in 0..=4 {
            let v = y_max * k as f64 / 4.0;
            let t = t_max * k as f64 / 4.0;
            svg += &format!(
                r#"<text x="{}" y="{}" text-anchor="end">{v:.2}</text><text x="{}" y="{}" text-anchor="middle">{t:.0}</text>"#,
                sx(0.0) - 4.0,
                sy(v) + 4.0,
                sx(t),
                sy(0.0) + 14.0
            );
        }
        svg += &format!(
            r#"<text x="{}" y="{}" text-anchor="middle">minutes</text><line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="gray" stroke-dasharray="4 3"/>"#,
            sx(t_max / 2.0),
            sy(0.0) + 28.0,
            sx(0.0),
            sx(t_max),
            y = sy(*target)
        );
        for (j, r) in runs.iter().enumerate() {
            let pts: Vec<String> = r
                .points
                .iter()
                .filter_map(|p| get(p).map(|v| format!("{:.1},{:.1}", sx(p.minutes), sy(v))))
                .collect();
            let c = colours[j % colours.len()];
            for p in &r.points {
                if let Some(v) = get(p) {
                    svg += &format!(
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"><title>{}</title></circle>"#,
                        sx(p.minutes),
                        sy(v),
                        p.stage
                    );
                }
            }
            svg += &format!(
                r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{}"/><text x="{}" y="{}" fill="{c}">seed {}</text>"#,
                pts.join(" "),
                x0 + w - 70.0,
                30.0 + 13.0 * j as f64,
                r.seed
            );
        }
    }
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcg_runfiles::metrics::{ClassScore, StateProportion};

    fn point(minutes: f64, fsc: f64, err: f64) -> Point {
        Point {
            minutes,
            fsc0: fsc,
            fsc1: fsc,
            p_err0: Some(err),
            p_err1: Some(err),
            transition: Some(0.0),
            ..Point::default()
        }
    }

    #[test]
    fn the_first_point_meeting_a_target_dates_it() {
        let points = [
            point(2.5, 0.40, 0.30),
            point(5.0, 0.55, 0.05),
            point(7.5, 0.45, 0.025),
            point(10.0, 0.72, 0.015),
        ];
        let t = targets("demo");
        assert_eq!(first_met(&points, &t[0]).map(|p| p.minutes), Some(7.5));
        assert_eq!(first_met(&points, &t[1]).map(|p| p.minutes), Some(5.0));
        // The paper-size discrete targets are stricter: 2 points and 0.70 of Nyquist.
        let t = targets("discrete");
        assert_eq!(first_met(&points, &t[0]).map(|p| p.minutes), Some(10.0));
        assert_eq!(first_met(&points, &t[1]).map(|p| p.minutes), Some(10.0));
        // A transition of 5 % or more fails the probability target whatever the errors.
        let mut leaky = point(1.0, 0.9, 0.0);
        leaky.transition = Some(0.05);
        assert!(!(targets("demo")[0].met)(&leaky));
        assert!((targets("adk")[0].met)(&leaky));
    }

    #[test]
    fn report_metrics_become_points() {
        let resolution = |nyquist: Option<f64>, area: f64| {
            json!({"resolution_A": {"0.5": null, "0.143": null},
                   "resolution_nyquist_fraction": {"0.5": nyquist, "0.143": null}, "area": area})
        };
        let m: Metrics = serde_json::from_value(json!({
            "run": "run",
            "training": {"steps": 100, "seconds": 180.0, "final_wasserstein_mean": null,
                         "images_per_second": 1000.0},
            "alignment": {"euler_deg": {"rot": 0.0, "tilt": 0.0, "psi": 0.0}, "flipped": false,
                          "shift_A": [0.0, 0.0, 0.0], "alpha_0_is_first_state": true},
            "fsc_ends": {
                "alpha_0": {"truth": "beta_00", "fsc": resolution(Some(0.31), 0.4)},
                "alpha_1": {"truth": "beta_20", "fsc": resolution(None, 0.95)},
            },
            "probabilities": {"cells": 20, "ends_area_fsc": 0.55, "threshold": 0.775,
                              "alpha_0_state": "beta_00", "alpha_1_state": "beta_20",
                              "alpha_0_fraction": 0.3, "alpha_1_fraction": 0.65,
                              "transition": 0.05,
                              "truth": {"alpha_0_state": 0.25, "alpha_1_state": 0.75},
                              "paper_threshold_0_5": {"alpha_0_fraction": 0.0,
                                  "alpha_1_fraction": 0.0, "transition": 1.0},
                              "membership": []},
        }))
        .unwrap();
        let p = Point::from_report("landscape", 3.0, 100, &m);
        // No 0.5 crossing: the FSC stays above 0.5 to Nyquist.
        assert_eq!((p.fsc0, p.fsc1), (0.31, 1.0));
        assert!((p.p_err0.unwrap() - 0.05).abs() < 1e-12);
        assert!((p.p_err1.unwrap() - 0.10).abs() < 1e-12);
        assert_eq!(p.fsccc, None);
        assert_eq!(p.stage, "landscape");
    }

    /// A classification's report: two states, three classes (class 2 matched to the first
    /// state, class 3 to the second, class 1 to none).
    fn classification() -> Classification {
        let record = |nyquist: f64| {
            serde_json::from_value(json!({
                "resolution_A": {"0.5": 10.0 / nyquist, "0.143": null},
                "resolution_nyquist_fraction": {"0.5": nyquist, "0.143": null}, "area": 0.6}))
            .unwrap()
        };
        let class = |class: usize, state: Option<&str>, pi: f64, fsc: f64| ClassScore {
            class,
            map: format!("class_{class:03}.mrc"),
            state: state.map(str::to_string),
            pi,
            fsc: Some(record(fsc)),
            half_set_resolution_angstrom: 11.0,
            half_set_resolution_nyquist: 0.9,
        };
        let proportion = |state: &str, truth: f64, class: usize, pi: f64| StateProportion {
            state: state.into(),
            true_fraction: Some(truth),
            class: Some(class),
            pi,
        };
        Classification {
            classes: 3,
            states: vec!["closed".into(), "open".into()],
            area_fsc: vec![vec![0.3, 0.3], vec![0.7, 0.3], vec![0.3, 0.8]],
            per_class: vec![
                class(1, None, 0.01, 0.1),
                class(2, Some("closed"), 0.26, 0.83),
                class(3, Some("open"), 0.73, 0.92),
            ],
            proportions: vec![
                proportion("closed", 0.25, 2, 0.26),
                proportion("open", 0.75, 3, 0.73),
            ],
            pi_max_difference_points: Some(3.0),
            accuracy: Some(0.97),
            particles: 100,
            history: Vec::new(),
        }
    }

    #[test]
    fn classes_become_points_through_their_states() {
        let p = Point::from_classes(4.0, &classification());
        assert_eq!(p.stage, "classes");
        // Each end is the class matched to that state, not the class of that number.
        assert_eq!((p.fsc0, p.fsc1), (0.83, 0.92));
        assert!((p.p_err0.unwrap() - 0.01).abs() < 1e-12);
        assert!((p.p_err1.unwrap() - 0.02).abs() < 1e-12);
        // The unmatched class's share is the transition.
        assert!((p.transition.unwrap() - 0.01).abs() < 1e-12);
        assert_eq!(p.accuracy, Some(0.97));
        let t = targets("demo");
        assert!((t[0].met)(&p) && (t[1].met)(&p));
        // A state with no class: its end scores 0 and its error is its whole share.
        let mut c = classification();
        c.proportions[0].class = None;
        c.proportions[0].pi = 0.0;
        let p = Point::from_classes(4.0, &c);
        assert_eq!(p.fsc0, 0.0);
        assert!((p.p_err0.unwrap() - 0.25).abs() < 1e-12);
        assert!((p.transition.unwrap() - 0.27).abs() < 1e-12);
        assert!(!(t[0].met)(&p) && !(t[1].met)(&p));
    }

    #[test]
    fn a_reconstruction_folder_is_scored_by_stage_and_dated_by_its_stages() {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path();
        let stage = |name: &str, seconds: f64, outcome: Value| {
            mcg_runfiles::reconstruct::Stage::new(name, true, seconds, outcome)
        };
        let record = mcg_runfiles::reconstruct::Record {
            software: "test".into(),
            particles: "p.star".into(),
            classes: 3,
            minutes: 10.0,
            pose_free: false,
            landscape: mcg_runfiles::reconstruct::Landscape::Discrete,
            seed: 0,
            stages: vec![
                stage("consensus", 150.0, Value::Null),
                stage(CLASSIFY, 90.0, Value::Null),
                stage(LANDSCAPE, 300.0, json!({"steps": 1234})),
                stage(REPORT, 30.0, Value::Null),
            ],
            result: Value::Null,
        };
        std::fs::write(rec.join(RECORD), serde_json::to_string(&record).unwrap()).unwrap();
        let metrics = |classification: Option<Classification>| {
            let mut m = json!({
                "run": "run",
                "training": {"steps": 0, "seconds": 0.0, "final_wasserstein_mean": null,
                             "images_per_second": null},
                "alignment": {"euler_deg": {"rot": 0.0, "tilt": 0.0, "psi": 0.0},
                              "flipped": false, "shift_A": [0.0, 0.0, 0.0],
                              "alpha_0_is_first_state": true},
            });
            if let Some(c) = classification {
                m["classification"] = serde_json::to_value(c).unwrap();
            }
            m.to_string()
        };
        let classify_report = rec.join(CLASSIFY).join(REPORT);
        std::fs::create_dir_all(&classify_report).unwrap();
        std::fs::write(
            classify_report.join("metrics.json"),
            metrics(Some(classification())),
        )
        .unwrap();
        std::fs::create_dir_all(rec.join(REPORT)).unwrap();
        std::fs::write(rec.join(REPORT).join("metrics.json"), metrics(None)).unwrap();

        let (points, stages) = score_reconstruction(rec).unwrap();
        assert_eq!(stages.len(), 4);
        assert_eq!(stages[3], ("report".to_string(), 30.0));
        assert_eq!(points.len(), 2);
        // The classes at the end of the classification, the landscape at its own end: the
        // reports' seconds date neither.
        assert_eq!((points[0].stage, points[0].minutes), ("classes", 4.0));
        assert_eq!((points[0].fsc0, points[0].fsc1), (0.83, 0.92));
        assert_eq!((points[1].stage, points[1].minutes), ("landscape", 9.0));
        assert_eq!(points[1].step, 1234);
        assert_eq!((points[1].fsc0, points[1].p_err0), (0.0, None));

        // A classification's report without classes is an error naming the folder.
        std::fs::write(classify_report.join("metrics.json"), metrics(None)).unwrap();
        let err = format!("{:#}", score_reconstruction(rec).unwrap_err());
        assert!(err.contains("has no classes"), "{err}");
    }

    #[test]
    fn arguments_are_parsed_and_checked() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let o = parse(&s(&[
            "--quality",
            "--sets",
            "demo,continuous,adk",
            "--seeds",
            "2",
            "--minutes",
            "5",
            "--",
            "--classes",
            "3",
        ]))
        .unwrap();
        assert_eq!(o.sets, ["demo", "continuous", "adk"]);
        assert_eq!((o.seeds, o.minutes, o.pose_free), (2, Some(5.0), false));
        assert_eq!(o.extra, ["--classes", "3"]);
        let o = parse(&s(&["--pose-free", "--every", "1.5"])).unwrap();
        assert!(o.pose_free);
        assert_eq!(o.every, 1.5);
        assert!(parse(&s(&["--sets", "nope"])).is_err());
        assert!(parse(&s(&["--bogus"])).is_err());
        assert!(parse(&s(&["--minutes", "0"])).is_err());
        // The time limits are the budgets by default.
        assert_eq!(SETS.map(limit_minutes), [10.0, 30.0, 45.0, 20.0]);
    }
}
