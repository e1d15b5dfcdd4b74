//! `cargo xtask bench --quality`: Multi-CryoGAN's quality against training time on the Hsp90
//! benchmark, several seeds, with the time at which each target was first met.
//!
//! Each run trains in segments of `--every` minutes (resuming its checkpoint); after each
//! segment `multicryogan report` scores the model against the ground truth, and the run's own
//! training clock (metrics.jsonl, which goes on across resumes) dates the point, so the time
//! the reports take does not count. Everything goes to `bench-results/quality/`: per run its
//! data (demo size), run folder and last report; `quality.json` with every point, the first
//! time each target was met and the final metrics; one SVG figure per set.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use mcg_runfiles::Metrics;
use serde_json::{Value, json};

use crate::util;

/// A target on one metric of a report point.
struct Target {
    name: &'static str,
    /// Whether a point meets it.
    met: fn(&Point) -> bool,
}

/// The numbers of one report, at a training time.
#[derive(Debug, Clone, Default)]
struct Point {
    minutes: f64,
    step: u64,
    /// FSC 0.5 of the α = 0 and α = 1 ends against their states, fraction of Nyquist (0 when
    /// the curve never crosses 0.5).
    fsc0: f64,
    fsc1: f64,
    /// Discrete: |recovered − true| fraction of each end's state, and the transition fraction.
    p_err0: Option<f64>,
    p_err1: Option<f64>,
    transition: Option<f64>,
    /// Continuous: FSCCC mean absolute difference and β(α)'s Wasserstein-1 (degrees).
    fsccc: Option<f64>,
    w1: Option<f64>,
}

impl Point {
    fn from_report(minutes: f64, step: u64, m: &Metrics) -> Self {
        let nyquist = |e: &mcg_runfiles::metrics::EndFsc| {
            e.fsc.resolution_nyquist_fraction.half.unwrap_or(0.0)
        };
        let p = m.probabilities.as_ref();
        let err = |fraction: f64, truth: Option<f64>| Some((fraction - truth?).abs());
        Self {
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
        }
    }

    fn json(&self) -> Value {
        json!({
            "minutes": self.minutes, "step": self.step,
            "fsc_0.5_alpha_0_nyquist": self.fsc0, "fsc_0.5_alpha_1_nyquist": self.fsc1,
            "probability_error_alpha_0": self.p_err0, "probability_error_alpha_1": self.p_err1,
            "transition": self.transition, "fsccc_mean_abs_difference": self.fsccc,
            "wasserstein1_deg": self.w1,
        })
    }
}

fn within(v: Option<f64>, limit: f64) -> bool {
    v.is_some_and(|v| v <= limit)
}

/// The issue's targets for each kind of set.
fn targets(set: &str) -> Vec<Target> {
    match set {
        "demo" => vec![
            Target {
                name: "probabilities within 5 points of the truth",
                met: |p| within(p.p_err0, 0.05) && within(p.p_err1, 0.05),
            },
            Target {
                name: "both ends FSC 0.5 >= 0.25 of Nyquist",
                met: |p| p.fsc0 >= 0.25 && p.fsc1 >= 0.25,
            },
        ],
        "discrete" => vec![
            Target {
                name: "probabilities within 3 points, transition < 5 %",
                met: |p| {
                    within(p.p_err0, 0.03) && within(p.p_err1, 0.03) && p.transition < Some(0.05)
                },
            },
            Target {
                name: "both ends FSC 0.5 >= 0.30 of Nyquist",
                met: |p| p.fsc0 >= 0.30 && p.fsc1 >= 0.30,
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
                name: "both ends FSC 0.5 >= 0.30 of Nyquist",
                met: |p| p.fsc0 >= 0.30 && p.fsc1 >= 0.30,
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
    train_extra: Vec<String>,
}

fn parse(rest: &[String]) -> Result<Options> {
    let mut o = Options {
        sets: vec!["demo".into()],
        seeds: 3,
        minutes: None,
        every: 2.5,
        device: "auto".into(),
        train_extra: Vec::new(),
    };
    let mut it = rest.iter().filter(|a| *a != "--quality");
    while let Some(a) = it.next() {
        if a == "--" {
            o.train_extra = it.cloned().collect();
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
                    if !["demo", "discrete", "continuous"].contains(&s.as_str()) {
                        bail!("--sets: unknown set {s:?}: expected demo, discrete or continuous");
                    }
                }
            }
            "--seeds" => o.seeds = value()?.parse().context("--seeds: expected a count")?,
            "--minutes" => {
                o.minutes = Some(value()?.parse().context("--minutes: expected a number")?);
            }
            "--every" => o.every = value()?.parse().context("--every: expected minutes")?,
            "--device" => o.device = value()?,
            other => bail!(
                "bench --quality: unknown argument {other:?} (arguments for `multicryogan \
                 train` go after --)"
            ),
        }
    }
    anyhow::ensure!(o.every > 0.0, "--every must be positive");
    anyhow::ensure!(o.seeds > 0, "--seeds must be at least 1");
    Ok(o)
}

/// One run's result.
struct RunResult {
    set: String,
    seed: u64,
    budget: f64,
    points: Vec<Point>,
}

pub fn run(bin: &Path, rest: &[String]) -> Result<()> {
    let o = parse(rest)?;
    let root = util::root();
    let base = root.join("bench-results/quality");
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let mut results = Vec::new();
    for set in &o.sets {
        // The demo-sized row runs every seed (data and training); each paper set runs once.
        let seeds: Vec<u64> = if set == "demo" {
            (1..=o.seeds).collect()
        } else {
            vec![0]
        };
        let budget = o.minutes.unwrap_or(if set == "demo" { 20.0 } else { 60.0 });
        for seed in seeds {
            let dir = base.join(format!("{set}-seed{seed}"));
            let data = data_set(bin, set, seed, &dir)?;
            let points = train_and_score(bin, &o, &data, &dir, seed, budget)?;
            results.push(RunResult {
                set: set.clone(),
                seed,
                budget,
                points,
            });
            write_results(&base, &o, &results)?;
        }
    }
    print_summary(&results);
    println!("written: {}", base.join("quality.json").display());
    Ok(())
}

/// The data set folder of a run: a fresh 10,000-image discrete set for the demo row (data seed
/// = `seed`), else the paper's set from `cargo xtask synth`.
fn data_set(bin: &Path, set: &str, seed: u64, dir: &Path) -> Result<PathBuf> {
    if set == "demo" {
        let data = dir.join("data");
        if !data.join("particles.star").is_file() {
            let (seed, out) = (seed.to_string(), data.to_string_lossy().into_owned());
            let mut args = crate::demo_synth_args(&seed, &out);
            args.push("--quiet");
            util::run(bin, &args)?;
        }
        return Ok(data);
    }
    let data = util::root().join(format!("out/hsp90-{set}"));
    if !data.join("particles.star").is_file() {
        bail!(
            "{} is missing: run `cargo xtask synth` first",
            data.join("particles.star").display()
        );
    }
    Ok(data)
}

/// Trains in segments up to `budget` minutes of training, scoring after each.
fn train_and_score(
    bin: &Path,
    o: &Options,
    data: &Path,
    dir: &Path,
    seed: u64,
    budget: f64,
) -> Result<Vec<Point>> {
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
                && !o.train_extra.iter().any(|a| a == "--generator")
            {
                args.extend(["--generator", g]);
            }
            args.extend(o.train_extra.iter().map(String::as_str));
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
        let path = report.join("metrics.json");
        let m: Metrics = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("{}: not a report's metrics.json", path.display()))?;
        let p = Point::from_report(minutes, step, &m);
        eprintln!(
            "quality: {} seed {seed}: {:.1} min, step {}, FSC 0.5 ends {:.3} / {:.3}{}{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            p.minutes,
            p.step,
            p.fsc0,
            p.fsc1,
            p.p_err0
                .zip(p.p_err1)
                .map(|(a, b)| format!(", probability errors {a:.3} / {b:.3}"))
                .unwrap_or_default(),
            p.fsccc
                .map(|f| format!(", FSCCC {f:.3}"))
                .unwrap_or_default()
                + &p.w1
                    .filter(|w| w.is_finite())
                    .map(|w| format!(", W1 {w:.2}°"))
                    .unwrap_or_default()
        );
        points.push(p);
    }
    Ok(points)
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
            let met: Vec<Value> = targets(&r.set)
                .iter()
                .map(|t| {
                    let first = first_met(&r.points, t);
                    json!({
                        "target": t.name,
                        "first_met_minutes": first.map(|p| p.minutes),
                        "first_met_step": first.map(|p| p.step),
                        "met_at_end": r.points.last().is_some_and(|p| (t.met)(p)),
                    })
                })
                .collect();
            json!({
                "set": r.set, "seed": r.seed, "budget_minutes": r.budget,
                "targets": met,
                "final": r.points.last().map(Point::json),
                "points": r.points.iter().map(Point::json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let doc = json!({
        "machine": crate::bench::machine(),
        "device": o.device,
        "every_minutes": o.every,
        "train_arguments": o.train_extra,
        "runs": runs,
    });
    util::write_atomic(
        &base.join("quality.json"),
        (serde_json::to_string_pretty(&doc)? + "\n").as_bytes(),
    )?;
    for set in ["demo", "discrete", "continuous"] {
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
    println!("\nquality against training time (first time each target was met):");
    for r in results {
        for t in targets(&r.set) {
            let first = first_met(&r.points, &t);
            println!(
                "  {:<10} seed {}  {:<52} {}",
                r.set,
                r.seed,
                t.name,
                first.map_or(format!("not met in {:.0} min", r.budget), |p| format!(
                    "{:.1} min (step {})",
                    p.minutes, p.step
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
        if set == "demo" { 0.25 } else { 0.30 },
    )];
    if set == "continuous" {
        panels.push(("FSCCC mean absolute difference", |p| p.fsccc, 0.05));
        panels.push(("β(α) Wasserstein-1 (degrees)", |p| p.w1, 2.0));
    } else {
        panels.push((
            "worse probability error",
            |p| Some(p.p_err0?.max(p.p_err1?)),
            if set == "demo" { 0.05 } else { 0.03 },
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
            r#"<text x="{}" y="{}" text-anchor="middle">training minutes</text><line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="gray" stroke-dasharray="4 3"/>"#,
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
            point(2.5, 0.20, 0.30),
            point(5.0, 0.26, 0.10),
            point(7.5, 0.24, 0.04),
            point(10.0, 0.27, 0.02),
        ];
        let t = targets("demo");
        assert_eq!(first_met(&points, &t[0]).map(|p| p.minutes), Some(7.5));
        assert_eq!(first_met(&points, &t[1]).map(|p| p.minutes), Some(5.0));
        // The paper-size discrete targets are stricter.
        let t = targets("discrete");
        assert_eq!(first_met(&points, &t[0]).map(|p| p.minutes), Some(10.0));
        assert!(first_met(&points, &t[1]).is_none());
    }

    #[test]
    fn report_metrics_become_points() {
        let resolution = |nyquist: Option<f64>| {
            json!({"resolution_A": {"0.5": null, "0.143": null},
                   "resolution_nyquist_fraction": {"0.5": nyquist, "0.143": null}, "area": 0.5})
        };
        let m: Metrics = serde_json::from_value(json!({
            "run": "run",
            "training": {"steps": 100, "seconds": 180.0, "final_wasserstein_mean": null,
                         "images_per_second": 1000.0},
            "alignment": {"euler_deg": {"rot": 0.0, "tilt": 0.0, "psi": 0.0}, "flipped": false,
                          "shift_A": [0.0, 0.0, 0.0], "alpha_0_is_first_state": true},
            "fsc_ends": {
                "alpha_0": {"truth": "beta_00", "fsc": resolution(Some(0.31))},
                "alpha_1": {"truth": "beta_20", "fsc": resolution(None)},
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
        let p = Point::from_report(3.0, 100, &m);
        assert_eq!((p.fsc0, p.fsc1), (0.31, 0.0));
        assert!((p.p_err0.unwrap() - 0.05).abs() < 1e-12);
        assert!((p.p_err1.unwrap() - 0.10).abs() < 1e-12);
        assert_eq!(p.fsccc, None);
    }

    #[test]
    fn arguments_are_parsed_and_checked() {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        let o = parse(&s(&[
            "--quality",
            "--sets",
            "demo,continuous",
            "--seeds",
            "2",
            "--minutes",
            "5",
            "--",
            "--pack",
            "4",
        ]))
        .unwrap();
        assert_eq!(o.sets, ["demo", "continuous"]);
        assert_eq!((o.seeds, o.minutes), (2, Some(5.0)));
        assert_eq!(o.train_extra, ["--pack", "4"]);
        assert!(parse(&s(&["--sets", "nope"])).is_err());
        assert!(parse(&s(&["--bogus"])).is_err());
    }
}
