//! Issue 15: the cost of the default training step at several image boxes (32², 64², 128² by
//! default), so that its growth with the box is measured, not guessed.
//!
//! For each box a small synthetic Hsp90 set of the same physical extent (160 Å: 5 Å pixels at
//! 32², 2.5 Å at 64², 1.25 Å at 128²) is made with `multicryogan synth`, then the default recipe
//! (the mixture generator, the fast step, the default batch settings, the same at every box)
//! trains on it for a few steps past its warm start (`--warm-steps 0`: the steps with the
//! mixture's K components, which make most of a run; the warm start's consensus is one volume).
//! The step time is the median of the steps after a warm-up, from metrics.jsonl (the trainer's
//! own clock, so neither starting up, reading the set nor the files written at the end count;
//! batches are prefetched); the shortest step is kept too, since on a shared machine the others'
//! load lengthens steps. Images per second: simulated images per G step (batch × (k + 1)) over
//! the median step; the peak resident memory is the train process's VmHWM. The ratios to the smallest box come from the same run.

use std::path::Path;

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{Figure, measured};

/// The physical box of every set, Å (the paper's 32² at 5 Å).
const EXTENT_A: f64 = 160.0;
/// Images per synthetic set: enough for random batches, cheap to make at 128².
const IMAGES: usize = 1000;
/// G steps run before the timed ones (libtorch's first allocations and kernel choices).
const WARMUP_STEPS: usize = 2;

/// Where to time the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU, and CUDA too where `nvidia-smi` lists a GPU (as the rest of bench).
    Auto,
    /// The CPU only.
    Cpu,
    /// The CPU and CUDA, CUDA's failure an error.
    Cuda,
}

impl DeviceChoice {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Self::Auto,
            "cpu" => Self::Cpu,
            "cuda" => Self::Cuda,
            other => bail!("--device: expected auto, cpu or cuda, got {other:?}"),
        })
    }

    /// The devices to time, in order, each with whether failing there is an error (a GPU
    /// without a usable CUDA libtorch only costs its own figures under `auto`).
    pub fn devices(self, gpu_listed: bool) -> Vec<(&'static str, bool)> {
        match self {
            Self::Cpu => vec![("cpu", true)],
            Self::Auto if !gpu_listed => vec![("cpu", true)],
            Self::Auto => vec![("cpu", true), ("cuda", false)],
            Self::Cuda => vec![("cpu", true), ("cuda", true)],
        }
    }
}

/// The step cost's settings, from `cargo xtask bench`'s command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Boxes to time, ascending, without repeats; the ratios are to the first.
    pub boxes: Vec<usize>,
    /// G steps timed per box, after the warm-up.
    pub timed_steps: usize,
    pub device: DeviceChoice,
}

impl Options {
    pub fn new(quick: bool) -> Self {
        Self {
            boxes: vec![32, 64, 128],
            timed_steps: if quick { 3 } else { 6 },
            device: DeviceChoice::Auto,
        }
    }
}

/// `--boxes 32,64,128`: even boxes of at least 16, sorted, repeats dropped.
pub fn parse_boxes(list: &str) -> Result<Vec<usize>> {
    super::parse_box_list("--boxes", list)
}

/// A count of at least 1 for option `name`.
pub fn parse_count(name: &str, value: &str) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{name}: expected a whole number of at least 1, got {value:?}"),
    }
}

/// One box on one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device: String,
    pub box_size: usize,
    pub pixel_size: f64,
    /// Every timed step's seconds, in order.
    pub step_seconds: Vec<f64>,
    /// Their median.
    pub seconds_per_step: f64,
    /// Simulated images per G step (batch × (k + 1)) over `seconds_per_step`.
    pub images_per_second: f64,
    pub peak_rss_mib: Option<f64>,
    /// `seconds_per_step` over that of the smallest box on the same device.
    pub ratio: f64,
}

/// Everything the step cost measured.
pub struct StepCost {
    pub options: Options,
    /// The batch settings of the runs (config.json's), the same at every box.
    pub settings: Value,
    pub rows: Vec<Row>,
    /// Devices not timed, with why.
    pub not_timed: Vec<(String, String)>,
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if !n.is_multiple_of(2) => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// The seconds of each step after the first `warmup`, from metrics lines as (step, time since
/// the start): a step's seconds are its time less the line before's.
pub fn step_times(lines: &[(u64, f64)], warmup: u64) -> Vec<f64> {
    lines
        .windows(2)
        .filter(|w| w[1].0 > warmup && w[1].0 == w[0].0 + 1)
        .map(|w| w[1].1 - w[0].1)
        .collect()
}

/// Sets each row's ratio to the smallest box of its device.
pub fn set_ratios(rows: &mut [Row]) {
    let reference: Vec<f64> = rows
        .iter()
        .map(|r| {
            rows.iter()
                .filter(|o| o.device == r.device)
                .min_by_key(|o| o.box_size)
                .map_or(f64::NAN, |o| o.seconds_per_step)
        })
        .collect();
    for (r, s) in rows.iter_mut().zip(reference) {
        r.ratio = r.seconds_per_step / s;
    }
}

/// Times the step at every box on every device chosen.
pub fn run(bin: &Path, work: &Path, o: &Options) -> Result<(Vec<Figure>, StepCost)> {
    let mut cost = StepCost {
        options: o.clone(),
        settings: Value::Null,
        rows: Vec::new(),
        not_timed: Vec::new(),
    };
    let mut sets = Vec::new();
    for &b in &o.boxes {
        sets.push((b, synth_set(bin, work, b)?));
    }
    let devices = o.device.devices(super::gpu_names().is_some());
    if devices.iter().all(|(d, _)| *d != "cuda") && o.device == DeviceChoice::Auto {
        cost.not_timed
            .push(("cuda".into(), "no NVIDIA GPU listed by nvidia-smi".into()));
    }
    for (device, required) in devices {
        let mut rows = Vec::new();
        let timed: Result<()> = sets.iter().try_for_each(|(b, star)| {
            let (row, settings) = time_box(bin, work, star, *b, device, o.timed_steps)?;
            cost.settings = settings;
            rows.push(row);
            Ok(())
        });
        match timed {
            Ok(()) => cost.rows.extend(rows),
            Err(e) if !required => {
                eprintln!("bench: the step cost on {device} could not be timed: {e:#}");
                cost.not_timed.push((device.into(), format!("{e:#}")));
            }
            Err(e) => return Err(e.context(format!("the step cost on {device}"))),
        }
    }
    set_ratios(&mut cost.rows);
    let figures = cost
        .rows
        .iter()
        .map(|r| Figure {
            name: format!(
                "train step cost at {}², default recipe, {}: seconds per G step",
                r.box_size,
                r.device.to_uppercase()
            ),
            value: r.seconds_per_step,
            unit: "s",
            target: None,
            detail: row_json(r, o.boxes[0]),
        })
        .collect();
    Ok((figures, cost))
}

/// The synthetic set of box `b` (its particles.star): Hsp90 discrete, [`IMAGES`] images of
/// [`EXTENT_A`] Å, the default imaging otherwise.
fn synth_set(bin: &Path, work: &Path, b: usize) -> Result<String> {
    let out = work.join(format!("step_cost_data_{b}"));
    let (b_s, apix) = (b.to_string(), (EXTENT_A / b as f64).to_string());
    super::discrete_set(bin, &out, IMAGES, &["--box", &b_s, "--apix", &apix])?;
    Ok(out.join("particles.star").to_string_lossy().into_owned())
}

/// Trains the default recipe for the warm-up and `timed_steps` steps on one set; its row, and
/// the batch settings the run recorded.
fn time_box(
    bin: &Path,
    work: &Path,
    star: &str,
    b: usize,
    device: &str,
    timed_steps: usize,
) -> Result<(Row, Value)> {
    let run = work.join(format!("step_cost_{b}_{device}"));
    let (run_s, steps) = (
        run.to_string_lossy().into_owned(),
        (WARMUP_STEPS + timed_steps).to_string(),
    );
    eprintln!("bench: step cost at {b}² on {device}: {steps} G steps");
    let m = measured(
        bin,
        &[
            "train",
            "--particles",
            star,
            "--out",
            &run_s,
            "--force",
            "--steps",
            &steps,
            "--set",
            "log_every=1",
            // The steps after the warm start, which make most of a run: the mixture's K
            // components each simulated and transformed (the warm start's consensus is one).
            "--set",
            "warm_steps=0",
            "--device",
            device,
            "--quiet",
            "--json",
        ],
    )?;
    let lines: Vec<(u64, f64)> = mcg_runfiles::read_metrics(&run)?
        .iter()
        .map(|l| (l.step, l.time))
        .collect();
    let step_seconds = step_times(&lines, WARMUP_STEPS as u64);
    anyhow::ensure!(
        !step_seconds.is_empty(),
        "{}: no step after the {WARMUP_STEPS} warm-up steps",
        mcg_runfiles::RunDir::new(&run).metrics().display()
    );
    let config = mcg_runfiles::RunDir::new(&run).read_config()?;
    let t = &config.train;
    let settings = json!({
        "batch_size": t["batch_size"], "d_steps": t["d_steps"], "step": t["step"],
        "generator": t["model"]["generator"], "components": t["model"]["components"],
        "component_coarsening": t["model"]["component_coarsening"], "pack": t["model"]["pack"],
        "warm_steps": t["warm_steps"],
    });
    std::fs::remove_dir_all(&run).ok();
    let seconds_per_step = median(&step_seconds);
    let row = Row {
        device: device.into(),
        box_size: b,
        pixel_size: config.data.pixel_size,
        seconds_per_step,
        images_per_second: images_per_step(&settings) / seconds_per_step,
        step_seconds,
        peak_rss_mib: m.peak_rss_mib,
        ratio: f64::NAN,
    };
    Ok((row, settings))
}

/// Simulated images per G step, batch × (k + 1), from the run's settings (NaN without them).
pub fn images_per_step(settings: &Value) -> f64 {
    match (
        settings["batch_size"].as_u64(),
        settings["d_steps"].as_u64(),
    ) {
        (Some(b), Some(k)) => (b * (k + 1)) as f64,
        _ => f64::NAN,
    }
}

/// One row as bench.json holds it (`reference` is the box the ratio is to).
fn row_json(r: &Row, reference: usize) -> Value {
    json!({
        "device": r.device,
        "box": r.box_size,
        "pixel_size_A": r.pixel_size,
        "seconds_per_step": r.seconds_per_step,
        "step_seconds": r.step_seconds,
        "shortest_step_seconds": shortest(&r.step_seconds),
        "images_per_second": r.images_per_second,
        "peak_rss_mib": r.peak_rss_mib,
        "ratio_to_reference_box": r.ratio,
        "reference_box": reference,
        "pixel_ratio": (r.box_size * r.box_size) as f64 / (reference * reference) as f64,
    })
}

/// bench.json's `step_cost`: the settings, every row, and per device the ratios as
/// `"64/32": 3.1`.
pub fn json(c: &StepCost) -> Value {
    let reference = c.options.boxes[0];
    let mut ratios = serde_json::Map::new();
    for r in c.rows.iter().filter(|r| r.box_size != reference) {
        let entry = ratios.entry(r.device.clone()).or_insert_with(|| json!({}));
        entry[format!("{}/{reference}", r.box_size)] = json!(r.ratio);
    }
    json!({
        "recipe": "the default (mixture generator, fast step), default batch settings at every box, \
            past the warm start (--warm-steps 0)",
        "settings": c.settings,
        "images_per_set": IMAGES,
        "extent_A": EXTENT_A,
        "warmup_steps": WARMUP_STEPS,
        "timed_steps": c.options.timed_steps,
        "boxes": c.options.boxes,
        "reference_box": reference,
        "rows": c.rows.iter().map(|r| row_json(r, reference)).collect::<Vec<_>>(),
        "ratios": ratios,
        "not_timed": c.not_timed.iter().map(|(d, why)| (d.clone(), json!(why)))
            .collect::<serde_json::Map<_, _>>(),
    })
}

/// The step cost as a small table on stdout.
pub fn print_table(c: &StepCost) {
    let reference = c.options.boxes[0];
    println!(
        "\nstep cost (default recipe, {} images a G step; median of {} steps after {WARMUP_STEPS}):",
        images_per_step(&c.settings),
        c.options.timed_steps,
    );
    println!(
        "{:<7} {:>6} {:>11} {:>9} {:>10} {:>14} {:>9} {:>9}",
        "device",
        "box",
        "s / G step",
        "shortest",
        "images/s",
        "peak RSS MiB",
        format!("× {reference}²"),
        "pixels ×"
    );
    for r in &c.rows {
        println!(
            "{:<7} {:>6} {:>11.3} {:>9.3} {:>10.0} {:>14} {:>9.2} {:>9.0}",
            r.device.to_uppercase(),
            format!("{}²", r.box_size),
            r.seconds_per_step,
            shortest(&r.step_seconds),
            r.images_per_second,
            r.peak_rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
            r.ratio,
            (r.box_size * r.box_size) as f64 / (reference * reference) as f64,
        );
    }
    for (device, why) in &c.not_timed {
        println!("{device}: not timed ({why})");
    }
}

/// The shortest of `steps` (NaN when empty).
fn shortest(steps: &[f64]) -> f64 {
    steps.iter().copied().reduce(f64::min).unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, box_size: usize, seconds_per_step: f64) -> Row {
        Row {
            device: device.into(),
            box_size,
            pixel_size: EXTENT_A / box_size as f64,
            step_seconds: vec![seconds_per_step],
            seconds_per_step,
            images_per_second: 160.0 / seconds_per_step,
            peak_rss_mib: Some(100.0),
            ratio: f64::NAN,
        }
    }

    #[test]
    fn boxes_are_sorted_deduplicated_and_checked() {
        assert_eq!(parse_boxes("128,32,64,32").unwrap(), [32, 64, 128]);
        assert_eq!(parse_boxes(" 64 ").unwrap(), [64]);
        for bad in ["", "32,", "33", "8", "x", "-32"] {
            let err = parse_boxes(bad).unwrap_err().to_string();
            assert!(err.contains("--boxes"), "{bad}: {err}");
        }
        assert_eq!(parse_count("--timed-steps", "4").unwrap(), 4);
        assert!(parse_count("--timed-steps", "0").is_err());
    }

    #[test]
    fn devices_follow_the_choice_and_the_gpu() {
        assert_eq!(DeviceChoice::Auto.devices(false), [("cpu", true)]);
        assert_eq!(
            DeviceChoice::Auto.devices(true),
            [("cpu", true), ("cuda", false)]
        );
        assert_eq!(DeviceChoice::Cpu.devices(true), [("cpu", true)]);
        assert_eq!(
            DeviceChoice::Cuda.devices(false),
            [("cpu", true), ("cuda", true)]
        );
        assert_eq!(DeviceChoice::parse("cuda").unwrap(), DeviceChoice::Cuda);
        assert!(DeviceChoice::parse("gpu").is_err());
    }

    #[test]
    fn median_and_step_times_skip_the_warm_up() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        assert_eq!(shortest(&[3.0, 1.0, 2.0]), 1.0);
        // Steps 1–5, cumulative times; step 1 holds the start-up.
        let lines = [(1, 5.0), (2, 6.5), (3, 7.0), (4, 8.0), (5, 8.25)];
        assert_eq!(step_times(&lines, 2), [0.5, 1.0, 0.25]);
        // A gap in the steps (a coarser log) times nothing across it.
        assert_eq!(step_times(&[(1, 1.0), (3, 2.0), (4, 2.5)], 1), [0.5]);
        assert_eq!(
            images_per_step(&json!({"batch_size": 32, "d_steps": 4})),
            160.0
        );
        assert!(images_per_step(&Value::Null).is_nan());
    }

    #[test]
    fn ratios_are_to_the_smallest_box_of_each_device() {
        let mut rows = vec![
            row("cpu", 32, 0.1),
            row("cpu", 64, 0.3),
            row("cpu", 128, 1.6),
            row("cuda", 32, 0.02),
            row("cuda", 128, 0.05),
        ];
        set_ratios(&mut rows);
        let ratios: Vec<f64> = rows.iter().map(|r| r.ratio).collect();
        let expected = [1.0, 3.0, 16.0, 1.0, 2.5];
        for (r, e) in ratios.iter().zip(expected) {
            assert!((r - e).abs() < 1e-12, "{ratios:?}");
        }
    }

    #[test]
    fn json_holds_rows_ratios_and_settings() {
        let mut rows = vec![
            row("cpu", 32, 0.1),
            row("cpu", 64, 0.4),
            row("cpu", 128, 2.0),
        ];
        set_ratios(&mut rows);
        let cost = StepCost {
            options: Options::new(false),
            settings: json!({"batch_size": 32, "d_steps": 4}),
            rows,
            not_timed: vec![("cuda".into(), "no NVIDIA GPU listed by nvidia-smi".into())],
        };
        let doc = json(&cost);
        assert_eq!(doc["boxes"], json!([32, 64, 128]));
        assert_eq!(doc["reference_box"], 32);
        assert_eq!(doc["warmup_steps"], WARMUP_STEPS);
        assert_eq!(doc["timed_steps"], 6);
        assert_eq!(doc["settings"]["batch_size"], 32);
        let r = |x: &Value| x.as_f64().unwrap();
        assert!((r(&doc["ratios"]["cpu"]["64/32"]) - 4.0).abs() < 1e-12);
        assert!((r(&doc["ratios"]["cpu"]["128/32"]) - 20.0).abs() < 1e-12);
        assert!(doc["ratios"]["cpu"].get("32/32").is_none());
        let rows = doc["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 3);
        let last = &rows[2];
        assert_eq!(last["device"], "cpu");
        assert_eq!(last["box"], 128);
        assert_eq!(last["pixel_size_A"], 1.25);
        assert_eq!(last["pixel_ratio"], 16.0);
        assert_eq!(last["seconds_per_step"], 2.0);
        assert_eq!(last["step_seconds"], json!([2.0]));
        assert_eq!(last["shortest_step_seconds"], 2.0);
        assert_eq!(last["images_per_second"], 80.0);
        assert_eq!(last["peak_rss_mib"], 100.0);
        assert!(doc["not_timed"]["cuda"].as_str().unwrap().contains("GPU"));
    }
}
