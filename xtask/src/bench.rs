//! `cargo xtask bench`: every benchmark of the project, timed end to end through the release
//! CLI as a user would run it, printed and written to `bench-results/bench.json` together with
//! a description of the machine. Numbers, not assertions: nothing here fails on a slow machine.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mcg_fsio::budget::vm_hwm_kib;
use serde_json::{Value, json};

use crate::{setup, util};

mod classify;
mod step_cost;

/// One measured figure.
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    target: Option<String>,
    detail: Value,
}

/// What `cargo xtask bench` (without `--quality`) was asked to run.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    quick: bool,
    /// `--step-cost`: the step cost across boxes alone, not every benchmark.
    step_cost_only: bool,
    step_cost: step_cost::Options,
    /// `--classify`: the classification stage across boxes alone (with `--step-cost`: both).
    classify_only: bool,
    classify: classify::Options,
}

impl Options {
    /// Whether the benchmarks before issue 15's run (neither part was asked for alone).
    fn everything(&self) -> bool {
        !self.step_cost_only && !self.classify_only
    }

    /// Whether the step cost runs (bench.json is written when it does).
    fn runs_step_cost(&self) -> bool {
        self.step_cost_only || !self.classify_only
    }

    /// Whether the classification benchmark runs.
    fn runs_classify(&self) -> bool {
        self.classify_only || !self.step_cost_only
    }

    /// The `part` bench.json names: the one part run alone, or none for the whole bench.
    fn part(&self) -> Option<&'static str> {
        match (self.step_cost_only, self.classify_only) {
            (false, false) => None,
            (true, false) => Some("step-cost"),
            (false, true) => Some("classify"),
            (true, true) => Some("step-cost+classify"),
        }
    }
}

fn parse(rest: &[String]) -> Result<Options> {
    let quick = rest.iter().any(|a| a == "--quick");
    let mut o = Options {
        quick,
        step_cost_only: false,
        step_cost: step_cost::Options::new(quick),
        classify_only: false,
        classify: classify::Options::new(quick),
    };
    let (mut step_cost_given, mut sizes_given) = (None, false);
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--quick" => {}
            "--step-cost" => o.step_cost_only = true,
            "--classify" => o.classify_only = true,
            "--boxes" => {
                o.step_cost.boxes = step_cost::parse_boxes(value()?)?;
                step_cost_given = Some("--boxes");
            }
            "--timed-steps" => {
                o.step_cost.timed_steps = step_cost::parse_count(a, value()?)?;
                step_cost_given = Some("--timed-steps");
            }
            "--sizes" => {
                o.classify.sizes = classify::parse_sizes(value()?)?;
                sizes_given = true;
            }
            "--device" => {
                let device = step_cost::DeviceChoice::parse(value()?)?;
                o.step_cost.device = device;
                o.classify.device = device;
            }
            other => anyhow::bail!(
                "bench: unknown argument {other:?} (expected --quick, --quality, --step-cost, \
                 --boxes, --timed-steps, --classify, --sizes, --device; `cargo xtask --help` \
                 describes them)"
            ),
        }
    }
    // An option of a part that does not run would be ignored without a word.
    if let Some(flag) = step_cost_given.filter(|_| !o.runs_step_cost()) {
        anyhow::bail!(
            "bench: {flag} sets the step cost, which --classify alone does not run; \
             --sizes chooses the classification's boxes (add --step-cost to run both)"
        );
    }
    if sizes_given && !o.runs_classify() {
        anyhow::bail!(
            "bench: --sizes sets the classification's boxes, which --step-cost alone does not \
             run; --boxes chooses the step cost's (add --classify to run both)"
        );
    }
    Ok(o)
}

pub fn run(rest: &[String]) -> Result<()> {
    setup::run()?;
    let bin = crate::release_cli()?;
    if rest.iter().any(|a| a == "--quality") {
        return crate::quality::run(&bin, rest);
    }
    let options = parse(rest)?;
    let quick = options.quick;
    let root = util::root();
    let work = root.join("bench-results/work");
    std::fs::create_dir_all(&work).context("creating bench-results/work")?;

    let mut figures = Vec::new();
    if options.everything() {
        figures.extend(every_other_figure(&bin, &work, quick)?);
    }
    // Issue 15: the default step's cost at several boxes, and its growth with the box.
    let step_cost = if options.runs_step_cost() {
        let (step_figures, step_cost) = step_cost::run(&bin, &work, &options.step_cost)?;
        figures.extend(step_figures);
        Some(step_cost)
    } else {
        None
    };
    // The classification stage's cost at several boxes.
    let classify = if options.runs_classify() {
        let (classify_figures, classify) = classify::run(&bin, &work, &options.classify)?;
        figures.extend(classify_figures);
        Some(classify)
    } else {
        None
    };

    let machine = machine();
    println!("\nmachine: {}", machine["cpu"].as_str().unwrap_or("?"));
    for f in &figures {
        println!(
            "{:<72} {:>12.1} {:<9} {}",
            f.name,
            f.value,
            f.unit,
            f.target
                .as_deref()
                .map(|t| format!("(target {t})"))
                .unwrap_or_default()
        );
    }
    if let Some(step_cost) = &step_cost {
        step_cost::print_table(step_cost);
    }
    if let Some(classify) = &classify {
        classify::print_table(classify);
        let doc = classify::json(machine.clone(), classify);
        write_json(&root.join("bench-results/classify.json"), &doc)?;
    }
    // bench.json holds the step cost (--classify alone leaves the last whole bench's in place).
    if let Some(step_cost) = &step_cost {
        let doc = document(
            machine,
            &options,
            &figures,
            step_cost::json(step_cost),
            classify.as_ref().map_or(Value::Null, classify::summary),
        );
        write_json(&root.join("bench-results/bench.json"), &doc)?;
    }
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}

/// Writes `doc` as pretty JSON to `path`, atomically, and says so.
fn write_json(path: &Path, doc: &Value) -> Result<()> {
    util::write_atomic(path, (serde_json::to_string_pretty(doc)? + "\n").as_bytes())?;
    println!("written: {}", path.display());
    Ok(())
}

/// bench.json: the machine, whether the run was short, every figure, the step cost's table
/// with its ratios, and the classification's summary (classify.json has it all; null when it
/// did not run). `part` names the part(s) run alone, null for the whole bench.
fn document(
    machine: Value,
    options: &Options,
    figures: &[Figure],
    step_cost: Value,
    classify: Value,
) -> Value {
    json!({
        "machine": machine,
        "quick": options.quick,
        "part": options.part(),
        "results": figures.iter().map(|f| json!({
            "name": f.name, "value": f.value, "unit": f.unit, "target": f.target, "detail": f.detail,
        })).collect::<Vec<_>>(),
        "step_cost": step_cost,
        "classify": classify,
    })
}

/// Every benchmark before issue 15's: simulation, synthetic sets, the training step, reading,
/// evaluation.
fn every_other_figure(bin: &Path, work: &Path, quick: bool) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let sizes: &[(usize, usize)] = if quick {
        &[(32, 10_000), (64, 2_000), (128, 500)]
    } else {
        &[(32, 100_000), (64, 20_000), (128, 5_000)]
    };
    for &(box_size, n) in sizes {
        let out = work.join(format!("project_{box_size}"));
        let (secs, report) = timed(
            bin,
            &[
                "project",
                "--n",
                &n.to_string(),
                "--box",
                &box_size.to_string(),
                "--apix",
                "5",
                "--ctf",
                "--snr-db",
                "-10",
                "--seed",
                "1",
                "--json",
                "--quiet",
                "--out",
                &out.to_string_lossy(),
            ],
        )?;
        figures.push(Figure {
            name: format!("project {box_size}² with CTF and noise, end to end incl. writing"),
            value: n as f64 / secs,
            unit: "images/s",
            target: (box_size == 32).then(|| "≥ 20,000 images/s".to_string()),
            detail: json!({"images": n, "wall_s": secs, "report": report}),
        });
    }

    // Issue 3: the Hsp90 benchmark end to end (ground truth, stack, STAR and container), and
    // peak memory at two sizes to show it does not grow with the images.
    let synth_sizes: &[usize] = if quick {
        &[2_000, 10_000]
    } else {
        &[10_000, 100_000]
    };
    for &n in synth_sizes {
        for h5 in [true, false] {
            let out = work.join(format!("synth_{n}_{h5}"));
            let n_s = n.to_string();
            let out_s = out.to_string_lossy().into_owned();
            let mut args = vec![
                "synth",
                "--preset",
                "hsp90-continuous",
                "--n",
                &n_s,
                "--seed",
                "1",
                "--json",
                "--quiet",
                "--out",
                &out_s,
            ];
            if !h5 {
                args.push("--no-h5");
            }
            let (secs, report) = timed(bin, &args)?;
            let manifest: Value = std::fs::read_to_string(out.join("manifest.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            let source = manifest["settings"]["structures"].clone();
            figures.push(Figure {
                name: format!(
                    "synth Hsp90 {n} × 32², CTF + noise, end to end{}",
                    if h5 { " incl. HDF5" } else { ", no HDF5" }
                ),
                value: secs,
                unit: "s",
                target: (n == 100_000 && h5).then(|| "< 10 s".to_string()),
                detail: json!({"images": n, "images_per_second": n as f64 / secs,
                    "peak_rss_mib": report["peak_rss_mib"], "structures": source,
                    "report": report}),
            });
            std::fs::remove_dir_all(&out).ok();
        }
    }

    // Issue 4: seconds per generator step (with its k discriminator steps) of the default
    // configuration on the CPU, for both projectors, measured from metrics.jsonl after the
    // first steps; and the PyTorch reference of the same step when python3 has PyTorch.
    let data = work.join("train_data");
    discrete_set(bin, &data, 4000, &[])?;
    let train_steps = if quick { 4 } else { 8 };
    figures.extend(train_step_figures(bin, work, &data, "cpu", train_steps)?);
    // The same on the GPU, where this machine has one.
    if gpu_names().is_some() {
        // A GPU without a usable CUDA libtorch (DEVELOPERS.md, "GPUs") costs these figures only.
        match train_step_figures(bin, work, &data, "cuda", 4 * train_steps) {
            Ok(f) => figures.extend(f),
            Err(e) => eprintln!("bench: the CUDA step could not be timed: {e:#}"),
        }
    } else {
        eprintln!("bench: no NVIDIA GPU here; the CUDA step was not timed");
    }

    let star = work.join("project_32/particles.star");
    let (secs, report) = timed(
        bin,
        &["info", &star.to_string_lossy(), "--read-images", "--json"],
    )?;
    let n = sizes[0].1;
    figures.push(Figure {
        name: format!("read {n} images of 32² and their STAR (streaming, all pixels touched)"),
        value: secs,
        unit: "s",
        target: (!quick).then(|| "< 1 s for 100,000 images".to_string()),
        detail: json!({"images": n, "report": report}),
    });

    // Issue 5: evaluation (FSC, alignment, FSCCC).
    figures.extend(eval_figures(bin, work)?);
    Ok(figures)
}

/// A training set for the step timings: `n` Hsp90 discrete images (data seed 1, no HDF5) into
/// `out`, with `extra` arguments of `multicryogan synth` (e.g. the box).
fn discrete_set(bin: &Path, out: &Path, n: usize, extra: &[&str]) -> Result<()> {
    let (n, out) = (n.to_string(), out.to_string_lossy());
    let mut args = vec![
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        &n,
        "--seed",
        "1",
        "--quiet",
        "--no-h5",
        "--out",
        &out,
    ];
    args.extend(extra);
    util::run(bin, &args)
}

/// FSC, alignment and FSCCC timings: in process, from mcg-eval's `eval_bench` example (which
/// also writes the maps it times), then the `fsc` and `align` commands end to end on those maps
/// (reading and, for `align`, writing included).
fn eval_figures(bin: &Path, work: &Path) -> Result<Vec<Figure>> {
    let maps = work.join("eval");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(&cargo)
        .args([
            "run",
            "--release",
            "--quiet",
            "-p",
            "mcg-eval",
            "--example",
            "eval_bench",
            "--",
        ])
        .arg(&maps)
        .current_dir(util::root())
        .output()
        .context("running mcg-eval's eval_bench example")?;
    anyhow::ensure!(
        out.status.success(),
        "eval_bench failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).context("eval_bench's JSON")?;
    let target = |name: &str| {
        if name.starts_with("fsc 256") {
            Some("< 1 s".to_string())
        } else if name.starts_with("align 64") {
            Some("< 30 s".to_string())
        } else if name.starts_with("align 32") {
            Some("a few seconds".to_string())
        } else {
            None
        }
    };
    let mut figures: Vec<Figure> = doc["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let name = r["name"].as_str().unwrap_or("?").to_string();
            Figure {
                target: target(&name),
                value: r["seconds"].as_f64().unwrap_or(f64::NAN),
                unit: "s",
                name,
                detail: r.clone(),
            }
        })
        .collect();
    let path = |name: &str| maps.join(name).to_string_lossy().into_owned();
    let (secs, report) = timed(
        bin,
        &[
            "fsc",
            &path("fsc256_a.mrc"),
            &path("fsc256_b.mrc"),
            "--json",
        ],
    )?;
    figures.push(Figure {
        name: "fsc 256³ end to end incl. reading both maps".into(),
        value: secs,
        unit: "s",
        target: None,
        detail: json!({"area": report["area"], "resolution_A": report["resolution_A"]}),
    });
    for n in [64, 32] {
        let (secs, report) = timed(
            bin,
            &[
                "align",
                &path(&format!("align{n}_map.mrc")),
                &path(&format!("align{n}_ref.mrc")),
                "--out",
                &path(&format!("align{n}_out.mrc")),
                "--json",
                "--quiet",
            ],
        )?;
        figures.push(Figure {
            name: format!("align {n}³ end to end incl. reading and writing"),
            value: secs,
            unit: "s",
            target: None,
            detail: report,
        });
    }
    Ok(figures)
}

/// Seconds per generator step (with its k discriminator steps) of the default configuration on
/// `device`, for both projectors, measured from metrics.jsonl after a first warm-up step; and
/// the PyTorch reference of the same step (`xtask/reference/step_benchmark.py`) when python3
/// has PyTorch.
fn train_step_figures(
    bin: &Path,
    work: &Path,
    data: &Path,
    device: &str,
    train_steps: usize,
) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let root = util::root();
    let label = device.to_uppercase();
    let script = root
        .join("xtask/reference/step_benchmark.py")
        .to_string_lossy()
        .into_owned();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    let steps = train_steps.to_string();
    let data_star = data.join("particles.star").to_string_lossy().into_owned();
    for projector in ["fourier", "real-space"] {
        // The paper's recipe (`--paper`: the CNN generator, G run for every D step), which the
        // PyTorch reference reproduces, then the default one; the ratio of the two, taken in
        // this one run, is the default's speed-up.
        let mut paper_step = f64::NAN;
        for recipe in ["paper", "default"] {
            let run = work.join(format!("train_{recipe}_{projector}_{device}"));
            let projector_setting = format!("projector={projector}");
            let mut args = vec![
                "train",
                "--particles",
                &*data_star,
                "--out",
                &*run.to_string_lossy(),
                "--force",
                "--steps",
                &steps,
                "--device",
                device,
                "--set",
                &projector_setting,
                "--quiet",
                "--json",
            ]
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
            if recipe == "paper" {
                args.push("--paper".into());
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            timed(bin, &refs)?;
            let (per_step, images_per_second) = step_time(&run)?;
            if recipe == "paper" {
                paper_step = per_step;
            }
            figures.push(Figure {
                name: format!(
                    "train: seconds per G step (k = 4 D steps), {recipe} recipe, {projector}, {label}"
                ),
                value: per_step,
                unit: "s",
                target: (recipe == "default")
                    .then(|| "≥ 4× cheaper than the paper recipe (ratio in detail)".to_string()),
                detail: json!({
                    "steps": train_steps,
                    "simulated_images_per_second": images_per_second,
                    "speedup_over_paper_recipe": (recipe == "default").then(|| paper_step / per_step),
                }),
            });
            if recipe == "default" {
                continue;
            }
            let reference = std::process::Command::new("python3")
                .args([
                    script.as_str(),
                    "--device",
                    device,
                    "--projector",
                    projector,
                    "--threads",
                    threads.as_str(),
                    "--steps",
                    if device == "cpu" { "3" } else { "30" },
                    "--warmup",
                    if device == "cpu" { "1" } else { "5" },
                ])
                .output();
            match reference {
                Ok(out) if out.status.success() => {
                    let line: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                    if let Some(py) = line["seconds_per_step"].as_f64() {
                        figures.push(Figure {
                        name: format!("train: the same step in PyTorch ({projector}, {label}); ratio Rust/PyTorch in detail"),
                        value: py,
                        unit: "s",
                        target: Some("Rust ≤ PyTorch".into()),
                        detail: json!({"ratio_rust_over_pytorch": per_step / py, "reference": line}),
                    });
                    }
                }
                _ => eprintln!(
                    "bench: python3 has no PyTorch here; the PyTorch reference step was not timed"
                ),
            }
        }
    }
    Ok(figures)
}

/// Mean seconds per step after the first (warm-up) step, and the last simulated images/s, from
/// a run's metrics.jsonl.
fn step_time(run: &Path) -> Result<(f64, f64)> {
    let lines = mcg_runfiles::read_metrics(run)?;
    anyhow::ensure!(
        lines.len() >= 2,
        "{}: fewer than two steps",
        mcg_runfiles::RunDir::new(run).metrics().display()
    );
    let (first, last) = (&lines[0], &lines[lines.len() - 1]);
    let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
    let per_step = (finite(last.time) - finite(first.time)) / (lines.len() - 1) as f64;
    Ok((per_step, finite(last.images_per_second)))
}

/// Runs the CLI, returning the wall time and its JSON report (stdout).
fn timed(bin: &Path, args: &[&str]) -> Result<(f64, Value)> {
    measured(bin, args).map(|m| (m.secs, m.report))
}

/// What one run of the CLI measured.
struct Measured {
    secs: f64,
    /// Its JSON report (stdout), or null.
    report: Value,
    /// Its peak resident memory (VmHWM), MiB, where /proc shows it.
    peak_rss_mib: Option<f64>,
}

/// Runs the CLI like [`timed`], and meanwhile reads its resident memory's high-water mark
/// (VmHWM of /proc/PID/status) every 20 ms until it ends: the last reading is the peak up to at
/// most 20 ms before the end.
fn measured(bin: &Path, args: &[&str]) -> Result<Measured> {
    measured_in(None, bin, args)
}

/// [`measured`], run in folder `dir` when given (else in this process's).
fn measured_in(dir: Option<&Path>, bin: &Path, args: &[&str]) -> Result<Measured> {
    let start = Instant::now();
    let mut command = std::process::Command::new(bin);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let child = command
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let status_file = format!("/proc/{}/status", child.id());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = None;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // Gone, or a zombie without memory lines: the process has ended.
                let Some(kib) = std::fs::read_to_string(&status_file)
                    .ok()
                    .and_then(|t| vm_hwm_kib(&t))
                else {
                    break;
                };
                peak = Some(kib);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peak
        })
    };
    let out = child.wait_with_output();
    let secs = start.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_kib = watcher.join().ok().flatten();
    let out = out.with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{} {} failed:\n{}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok(Measured {
        secs,
        report,
        peak_rss_mib: peak_kib.map(|kib| kib as f64 / 1024.0),
    })
}

/// CPU model, core count, memory and OS of this machine.
pub fn machine() -> Value {
    // lscpu's "Model name" (which also names ARM cores), else /proc/cpuinfo's "model name".
    let named = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(key))
            .and_then(|rest| rest.trim_start().strip_prefix(':'))
            .map(|name| name.trim().to_string())
            .filter(|name| !name.is_empty())
    };
    let cpu = util::output("lscpu", &[])
        .and_then(|t| named(&t, "Model name"))
        .or_else(|| {
            named(
                &std::fs::read_to_string("/proc/cpuinfo").ok()?,
                "model name",
            )
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": mem_gib,
        "os": util::output("uname", &["-sr"]).map(|s| s.trim().to_string()),
        "rustc": util::output("rustc", &["--version"]).map(|s| s.trim().to_string()),
        "gpus": gpu_names(),
    })
}

/// The NVIDIA GPUs `nvidia-smi -L` lists, or `None` where it lists none or is missing.
pub fn gpu_names() -> Option<Vec<String>> {
    let list = util::output("nvidia-smi", &["-L"])?;
    let gpus: Vec<String> = list
        .lines()
        .filter(|l| l.starts_with("GPU"))
        .map(|l| l.trim().to_string())
        .collect();
    (!gpus.is_empty()).then_some(gpus)
}

/// A comma-separated list of image boxes for `option`: even boxes of at least 16 pixels,
/// sorted, repeats dropped.
pub fn parse_box_list(option: &str, list: &str) -> Result<Vec<usize>> {
    let mut boxes = Vec::new();
    for item in list.split(',') {
        let b: usize = item
            .trim()
            .parse()
            .with_context(|| format!("{option}: {item:?} is not a box size in pixels"))?;
        if b < 16 || !b.is_multiple_of(2) {
            bail!("{option}: {b}: expected even boxes of at least 16 pixels");
        }
        boxes.push(b);
    }
    boxes.sort_unstable();
    boxes.dedup();
    Ok(boxes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Options> {
        parse(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn bench_arguments_select_the_step_cost_and_its_settings() {
        let all = parsed(&[]).unwrap();
        assert!(!all.quick && !all.step_cost_only);
        assert_eq!(all.step_cost, step_cost::Options::new(false));
        assert_eq!(all.step_cost.boxes, [32, 64, 128]);
        let quick = parsed(&["--quick"]).unwrap();
        assert_eq!(quick.step_cost.timed_steps, 3);
        let own = parsed(&[
            "--step-cost",
            "--boxes",
            "64,32",
            "--timed-steps",
            "10",
            "--device",
            "cpu",
        ])
        .unwrap();
        assert!(own.step_cost_only);
        assert_eq!(own.step_cost.boxes, [32, 64]);
        assert_eq!(own.step_cost.timed_steps, 10);
        assert_eq!(own.step_cost.device, step_cost::DeviceChoice::Cpu);
        // --quick after --timed-steps keeps the given count.
        let given = parsed(&["--timed-steps", "5", "--quick"]).unwrap();
        assert_eq!(given.step_cost.timed_steps, 5);
        for bad in [
            ["--boxes"].as_slice(),
            &["--stepcost"],
            &["--device", "gpu"],
        ] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bench_json_keeps_its_fields_and_adds_the_step_cost() {
        let figure = Figure {
            name: "n".into(),
            value: 1.5,
            unit: "s",
            target: None,
            detail: json!({"a": 1}),
        };
        let options = parsed(&["--step-cost"]).unwrap();
        let doc = document(
            json!({"cpu": "x"}),
            &options,
            &[figure],
            json!({"rows": []}),
            Value::Null,
        );
        assert_eq!(doc["machine"]["cpu"], "x");
        assert_eq!(doc["quick"], false);
        assert_eq!(doc["part"], "step-cost");
        assert_eq!(
            doc["results"],
            json!([{"name": "n", "value": 1.5, "unit": "s", "target": null, "detail": {"a": 1}}])
        );
        assert_eq!(doc["step_cost"]["rows"], json!([]));
        assert!(doc["classify"].is_null());
        let whole = document(
            Value::Null,
            &parsed(&[]).unwrap(),
            &[],
            Value::Null,
            json!({"rows": [{"box": 32}]}),
        );
        assert!(whole["part"].is_null());
        assert_eq!(whole["classify"]["rows"][0]["box"], 32);
    }

    #[test]
    fn bench_arguments_select_the_classification_and_its_sizes() {
        let all = parsed(&[]).unwrap();
        assert!(all.everything() && all.runs_step_cost() && all.runs_classify());
        assert_eq!(all.classify, classify::Options::new(false));
        assert_eq!(all.classify.sizes, [32, 64, 128]);
        assert_eq!(all.classify.images, classify::IMAGES);
        assert_eq!(
            parsed(&["--quick"]).unwrap().classify.images,
            classify::QUICK_IMAGES
        );
        let own = parsed(&["--classify", "--sizes", "64,32", "--device", "cpu"]).unwrap();
        assert!(own.classify_only && !own.everything() && !own.runs_step_cost());
        assert!(own.runs_classify());
        assert_eq!(own.part(), Some("classify"));
        assert_eq!(own.classify.sizes, [32, 64]);
        assert_eq!(own.classify.device, step_cost::DeviceChoice::Cpu);
        let step = parsed(&["--step-cost"]).unwrap();
        assert!(step.runs_step_cost() && !step.runs_classify());
        let both = parsed(&[
            "--step-cost",
            "--classify",
            "--sizes",
            "32",
            "--boxes",
            "32",
        ]);
        let both = both.unwrap();
        assert!(both.runs_step_cost() && both.runs_classify() && !both.everything());
        assert_eq!(both.part(), Some("step-cost+classify"));
        // The whole bench takes both parts' options.
        assert!(parsed(&["--sizes", "32", "--boxes", "64"]).is_ok());
        // A part's option where that part does not run is an error that says which is which.
        let err = parsed(&["--classify", "--boxes", "32"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--boxes") && err.contains("--sizes"), "{err}");
        let err = parsed(&["--step-cost", "--sizes", "32"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--sizes") && err.contains("--boxes"), "{err}");
        for bad in [
            ["--classify", "--sizes"].as_slice(),
            &["--classify", "--sizes", "31"],
            &["--classify", "--sizes", "32,x"],
        ] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn peak_memory_of_a_child_is_measured() {
        if Path::new("/proc/self/status").is_file() {
            let m = measured(Path::new("sleep"), &["0.2"]).unwrap();
            assert!(m.peak_rss_mib.is_some_and(|mib| mib > 0.0));
            assert!(m.report.is_null());
        }
    }
}
