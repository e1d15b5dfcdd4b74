//! `cargo xtask bench --classify`: the cost of the classification stage, `multicryogan
//! classify` (3D classification with the poses marginalised), at several image boxes (32², 64²
//! and 128² by default).
//!
//! For each box a two-state Hsp90 set ([`IMAGES`] images, 25 % closed / 75 % open, −10 dB) of
//! the same physical extent as the step cost's (160 Å: 5 Å pixels at 32², 2.5 Å at 64², 1.25 Å
//! at 128²) is made with `multicryogan synth`, with a reference that is the ground-truth states'
//! mean weighted by their shares (0.25 closed + 0.75 open, the consensus a pose-free
//! reconstruction aims at). `classify --classes 2 --iterations 2` then runs on it with as many
//! threads as the machine has cores. The figures come from the run's model.json (its own clock
//! per iteration: the start, iteration 0, apart from the EM iterations), the wall time from
//! here (starting up and reading the set included), and the peak resident memory from the
//! process's VmHWM (/proc/PID/status, read every 20 ms: the kernel's high-water mark, the figure
//! getrusage's ru_maxrss gives, up to at most the last 20 ms of the run).

use std::path::Path;

use anyhow::{Context, Result};
use mcg_formats::mrc;
use serde_json::{Value, json};

use super::step_cost::DeviceChoice;
use super::{Figure, measured};

/// Images per synthetic set: enough for two classes of hundreds, a few minutes at 64² on two
/// cores.
pub const IMAGES: usize = 2000;
/// Images with `--quick`.
pub const QUICK_IMAGES: usize = 1000;
/// The physical box of every set, Å (as the step cost's).
const EXTENT_A: f64 = 160.0;
/// EM iterations after the start.
const ITERATIONS: usize = 2;
/// Classes (the set's two states).
const CLASSES: usize = 2;
/// The states' shares in the hsp90-discrete preset: closed (beta_00), open (beta_20).
const SHARES: [(&str, f32); 2] = [("beta_00.mrc", 0.25), ("beta_20.mrc", 0.75)];
/// How the peak memory is measured, for the JSON.
const MEMORY_METHOD: &str = "VmHWM of /proc/PID/status of the classify process, read every \
    20 ms (the kernel's high-water mark, as getrusage's ru_maxrss; the last 20 ms unseen)";
/// What the JSON says where RELION is not installed.
const RELION_ABSENT: &str = "absent (apt-get install relion)";

/// The classification benchmark's settings, from `cargo xtask bench`'s command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Boxes to time, ascending, without repeats; the ratios are to the first.
    pub sizes: Vec<usize>,
    /// Images per set.
    pub images: usize,
    pub device: DeviceChoice,
}

impl Options {
    pub fn new(quick: bool) -> Self {
        Self {
            sizes: vec![32, 64, 128],
            images: if quick { QUICK_IMAGES } else { IMAGES },
            device: DeviceChoice::Auto,
        }
    }
}

/// `--sizes 32,64`: even boxes of at least 16, sorted, repeats dropped.
pub fn parse_sizes(list: &str) -> Result<Vec<usize>> {
    super::parse_box_list("--sizes", list)
}

/// One iteration of a run, from model.json's `history`.
#[derive(Debug, Clone, PartialEq)]
pub struct Iteration {
    pub iteration: u64,
    pub seconds: f64,
    pub rotations: u64,
    pub r_max: f64,
    pub angular_step_deg: f64,
}

/// One box on one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device: String,
    pub box_size: usize,
    pub pixel_size: f64,
    pub images: usize,
    /// The start (iteration 0) first, then every EM iteration.
    pub history: Vec<Iteration>,
    /// The start's seconds (scaling, recentring, the consensus refinement, the split).
    pub start_seconds: f64,
    /// The mean seconds of the EM iterations (iterations ≥ 1).
    pub seconds_per_iteration: f64,
    /// Images over `seconds_per_iteration`.
    pub images_per_second: f64,
    /// The classify process end to end, seconds (starting up and reading included).
    pub wall_seconds: f64,
    pub peak_rss_mib: Option<f64>,
    /// The final class probabilities.
    pub pi: Vec<f64>,
    /// `seconds_per_iteration` over that of the smallest box on the same device.
    pub ratio: f64,
}

/// Everything the classification benchmark measured.
pub struct Classify {
    pub options: Options,
    pub threads: usize,
    pub relion: String,
    /// Where the sets' structures came from (the synth manifest's `structures`).
    pub structures: Value,
    pub rows: Vec<Row>,
    /// Devices not timed, with why.
    pub not_timed: Vec<(String, String)>,
}

/// The start and EM iterations of a model.json; an error naming `path` when it has none.
pub fn history(model: &Value, path: &Path) -> Result<Vec<Iteration>> {
    let items = model["history"]
        .as_array()
        .with_context(|| format!("{}: no history array", path.display()))?;
    items
        .iter()
        .map(|h| {
            let f = |key: &str| {
                h[key].as_f64().with_context(|| {
                    format!("{}: a history entry without {key}: {h}", path.display())
                })
            };
            Ok(Iteration {
                iteration: f("iteration")? as u64,
                seconds: f("seconds")?,
                rotations: f("rotations")? as u64,
                r_max: f("r_max")?,
                angular_step_deg: f("angular_step_deg")?,
            })
        })
        .collect()
}

/// A row from one run's history (the start and at least one EM iteration).
pub fn row(
    device: &str,
    box_size: usize,
    pixel_size: f64,
    images: usize,
    history: Vec<Iteration>,
    wall_seconds: f64,
    peak_rss_mib: Option<f64>,
    pi: Vec<f64>,
) -> Result<Row> {
    let start_seconds = history
        .iter()
        .find(|h| h.iteration == 0)
        .map(|h| h.seconds)
        .context("model.json's history has no start (iteration 0)")?;
    let em: Vec<f64> = history
        .iter()
        .filter(|h| h.iteration >= 1)
        .map(|h| h.seconds)
        .collect();
    anyhow::ensure!(
        !em.is_empty(),
        "model.json's history has no EM iteration (iteration 1 or later)"
    );
    let seconds_per_iteration = em.iter().sum::<f64>() / em.len() as f64;
    Ok(Row {
        device: device.into(),
        box_size,
        pixel_size,
        images,
        history,
        start_seconds,
        seconds_per_iteration,
        images_per_second: images as f64 / seconds_per_iteration,
        wall_seconds,
        peak_rss_mib,
        pi,
        ratio: f64::NAN,
    })
}

/// Sets each row's ratio to the smallest box of its device.
pub fn set_ratios(rows: &mut [Row]) {
    let reference: Vec<f64> = rows
        .iter()
        .map(|r| {
            rows.iter()
                .filter(|o| o.device == r.device)
                .min_by_key(|o| o.box_size)
                .map_or(f64::NAN, |o| o.seconds_per_iteration)
        })
        .collect();
    for (r, s) in rows.iter_mut().zip(reference) {
        r.ratio = r.seconds_per_iteration / s;
    }
}

/// RELION's `relion_refine` where it is on the PATH: its version line (or that it is there but
/// gave none); [`RELION_ABSENT`] otherwise.
pub fn relion() -> String {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join("relion_refine").is_file()));
    if !on_path {
        return RELION_ABSENT.into();
    }
    // relion_refine --version prints its version and may exit non-zero; take either stream.
    let out = std::process::Command::new("relion_refine")
        .arg("--version")
        .output();
    let text = out
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default();
    relion_version(&text).unwrap_or_else(|| "present (relion_refine gave no version)".into())
}

/// The line of `relion_refine --version`'s output that names the version.
pub fn relion_version(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| l.to_ascii_lowercase().contains("version"))
        .map(str::to_string)
}

/// Times `classify` at every box on every device chosen.
pub fn run(bin: &Path, work: &Path, o: &Options) -> Result<(Vec<Figure>, Classify)> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut c = Classify {
        options: o.clone(),
        threads,
        relion: relion(),
        structures: Value::Null,
        rows: Vec::new(),
        not_timed: Vec::new(),
    };
    let mut sets = Vec::new();
    for &b in &o.sizes {
        let (star, reference, structures) = two_state_set(bin, work, b, o.images)?;
        c.structures = structures;
        sets.push((b, star, reference));
    }
    let devices = o.device.devices(super::gpu_names().is_some());
    if devices.iter().all(|(d, _)| *d != "cuda") && o.device == DeviceChoice::Auto {
        c.not_timed
            .push(("cuda".into(), "no NVIDIA GPU listed by nvidia-smi".into()));
    }
    for (device, required) in devices {
        let mut rows = Vec::new();
        let timed: Result<()> = sets.iter().try_for_each(|(b, star, reference)| {
            rows.push(time_box(
                bin, work, star, reference, *b, o.images, device, threads,
            )?);
            Ok(())
        });
        match timed {
            Ok(()) => c.rows.extend(rows),
            Err(e) if !required => {
                eprintln!("bench: classify on {device} could not be timed: {e:#}");
                c.not_timed.push((device.into(), format!("{e:#}")));
            }
            Err(e) => return Err(e.context(format!("classify on {device}"))),
        }
    }
    set_ratios(&mut c.rows);
    let figures = c
        .rows
        .iter()
        .map(|r| Figure {
            name: format!(
                "classify {}² ({} images, 2 classes), {}: seconds per EM iteration",
                r.box_size,
                r.images,
                r.device.to_uppercase()
            ),
            value: r.seconds_per_iteration,
            unit: "s",
            target: None,
            detail: row_json(r, o.sizes[0]),
        })
        .collect();
    Ok((figures, c))
}

/// The two-state set of box `b`: its particles.star, the reference written beside it (the
/// ground-truth states' mean, weighted by their shares) and the structures' source.
fn two_state_set(
    bin: &Path,
    work: &Path,
    b: usize,
    images: usize,
) -> Result<(String, String, Value)> {
    let out = work.join(format!("classify_data_{b}"));
    let (b_s, apix) = (b.to_string(), (EXTENT_A / b as f64).to_string());
    eprintln!("bench: classify at {b}²: synthesising {images} Hsp90 images at {apix} Å");
    super::discrete_set(bin, &out, images, &["--box", &b_s, "--apix", &apix])?;
    let reference = out.join("reference.mrc");
    write_reference(&out.join("ground_truth"), &reference)?;
    let structures = std::fs::read_to_string(out.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map_or(Value::Null, |m| m["settings"]["structures"].clone());
    Ok((
        out.join("particles.star").to_string_lossy().into_owned(),
        reference.to_string_lossy().into_owned(),
        structures,
    ))
}

/// Writes to `path` the mean of the ground-truth states in `truth`, weighted by [`SHARES`].
fn write_reference(truth: &Path, path: &Path) -> Result<()> {
    let read = |name: &str| {
        let p = truth.join(name);
        mrc::read_volume(&p, None).with_context(|| format!("reading {}", p.display()))
    };
    let [(first, w0), (second, w1)] = SHARES;
    let mut mean = read(first)?;
    let other = read(second)?;
    anyhow::ensure!(
        mean.data().dim() == other.data().dim(),
        "{} and {} differ in size",
        truth.join(first).display(),
        truth.join(second).display()
    );
    mean.data_mut()
        .zip_mut_with(other.data(), |a, &b| *a = w0 * *a + w1 * b);
    mrc::write_volume(path, &mean).with_context(|| format!("writing {}", path.display()))
}

/// Runs classify on one set and reads its model.json.
#[allow(clippy::too_many_arguments)]
fn time_box(
    bin: &Path,
    work: &Path,
    star: &str,
    reference: &str,
    b: usize,
    images: usize,
    device: &str,
    threads: usize,
) -> Result<Row> {
    let run = work.join(format!("classify_{b}_{device}"));
    std::fs::remove_dir_all(&run).ok();
    let (run_s, threads_s, iterations, classes) = (
        run.to_string_lossy().into_owned(),
        threads.to_string(),
        ITERATIONS.to_string(),
        CLASSES.to_string(),
    );
    eprintln!(
        "bench: classify at {b}² on {device}: {images} images, {CLASSES} classes, \
         {ITERATIONS} iterations, {threads} threads"
    );
    let m = measured(
        bin,
        &[
            "classify",
            "--particles",
            star,
            "--reference",
            reference,
            "--classes",
            &classes,
            "--out",
            &run_s,
            "--iterations",
            &iterations,
            "--threads",
            &threads_s,
            "--device",
            device,
            "--quiet",
        ],
    )?;
    let path = run.join("model.json");
    let model: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))?;
    let pi = model["pi"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let pixel_size = model["apix"].as_f64().unwrap_or(EXTENT_A / b as f64);
    let r = row(
        device,
        b,
        pixel_size,
        images,
        history(&model, &path)?,
        m.secs,
        m.peak_rss_mib,
        pi,
    )
    .with_context(|| path.display().to_string())?;
    std::fs::remove_dir_all(&run).ok();
    Ok(r)
}

/// One row as classify.json holds it (`reference` is the box the ratio is to).
fn row_json(r: &Row, reference: usize) -> Value {
    json!({
        "device": r.device,
        "box": r.box_size,
        "pixel_size_A": r.pixel_size,
        "images": r.images,
        "start_seconds": r.start_seconds,
        "seconds_per_iteration": r.seconds_per_iteration,
        "images_per_second": r.images_per_second,
        "wall_seconds": r.wall_seconds,
        "peak_rss_mib": r.peak_rss_mib,
        "pi": r.pi,
        "iterations": r.history.iter().map(|h| json!({
            "iteration": h.iteration, "seconds": h.seconds, "rotations": h.rotations,
            "r_max": h.r_max, "angular_step_deg": h.angular_step_deg,
            "images_per_second": (h.iteration >= 1).then(|| r.images as f64 / h.seconds),
        })).collect::<Vec<_>>(),
        "ratio_to_reference_box": r.ratio,
        "reference_box": reference,
        "pixel_ratio": (r.box_size * r.box_size) as f64 / (reference * reference) as f64,
    })
}

/// Per device the ratios of seconds per iteration to the smallest box (`"64/32": 3.1`), and
/// per box CPU over CUDA where both ran.
fn ratios(c: &Classify) -> Value {
    let reference = c.options.sizes[0];
    let mut boxes = serde_json::Map::new();
    for r in c.rows.iter().filter(|r| r.box_size != reference) {
        let entry = boxes.entry(r.device.clone()).or_insert_with(|| json!({}));
        entry[format!("{}/{reference}", r.box_size)] = json!(r.ratio);
    }
    let mut cuda = serde_json::Map::new();
    for g in c.rows.iter().filter(|r| r.device == "cuda") {
        if let Some(cpu) = c
            .rows
            .iter()
            .find(|r| r.device == "cpu" && r.box_size == g.box_size)
        {
            cuda.insert(
                g.box_size.to_string(),
                json!(cpu.seconds_per_iteration / g.seconds_per_iteration),
            );
        }
    }
    json!({"to_reference_box": boxes, "cpu_over_cuda": cuda})
}

/// classify.json: the machine, RELION's presence, the settings, every row and the ratios.
pub fn json(machine: Value, c: &Classify) -> Value {
    let reference = c.options.sizes[0];
    json!({
        "machine": machine,
        "relion": c.relion,
        "command": format!(
            "multicryogan classify --particles SET/particles.star --reference SET/reference.mrc \
             --classes {CLASSES} --iterations {ITERATIONS} --threads {} --device DEVICE",
            c.threads
        ),
        "settings": {
            "images": c.options.images,
            "classes": CLASSES,
            "iterations": ITERATIONS,
            "threads": c.threads,
            "data": "multicryogan synth --preset hsp90-discrete --seed 1 --no-h5 (25 % closed, \
                75 % open, CTF, -10 dB)",
            "extent_A": EXTENT_A,
            "reference": "the ground-truth states' mean: 0.25 beta_00 + 0.75 beta_20",
            "structures": c.structures,
            "other_classify_options": "the defaults",
        },
        "sizes": c.options.sizes,
        "reference_box": reference,
        "memory": MEMORY_METHOD,
        "rows": c.rows.iter().map(|r| row_json(r, reference)).collect::<Vec<_>>(),
        "ratios": ratios(c),
        "not_timed": not_timed(c),
    })
}

fn not_timed(c: &Classify) -> Value {
    c.not_timed
        .iter()
        .map(|(d, why)| (d.clone(), json!(why)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// bench.json's `classify`: the figures that matter per row, the rest in classify.json.
pub fn summary(c: &Classify) -> Value {
    json!({
        "details": "bench-results/classify.json",
        "images": c.options.images,
        "iterations": ITERATIONS,
        "threads": c.threads,
        "relion": c.relion,
        "rows": c.rows.iter().map(|r| json!({
            "device": r.device, "box": r.box_size,
            "seconds_per_iteration": r.seconds_per_iteration, "start_seconds": r.start_seconds,
            "images_per_second": r.images_per_second, "peak_rss_mib": r.peak_rss_mib,
            "ratio_to_reference_box": r.ratio,
        })).collect::<Vec<_>>(),
        "not_timed": not_timed(c),
    })
}

/// The classification benchmark as a small table on stdout.
pub fn print_table(c: &Classify) {
    let reference = c.options.sizes[0];
    println!(
        "\nclassify ({} images, {CLASSES} classes, {ITERATIONS} EM iterations, {} threads; \
         RELION: {}):",
        c.options.images, c.threads, c.relion
    );
    println!(
        "{:<7} {:>6} {:>6} {:>10} {:>9} {:>11} {:>10} {:>8} {:>14} {:>8}",
        "device",
        "box",
        "Å/px",
        "rotations",
        "start s",
        "s / iter.",
        "images/s",
        "wall s",
        "peak RSS MiB",
        format!("× {reference}²"),
    );
    for r in &c.rows {
        let rotations: Vec<String> = r
            .history
            .iter()
            .filter(|h| h.iteration >= 1)
            .map(|h| h.rotations.to_string())
            .collect();
        println!(
            "{:<7} {:>6} {:>6} {:>10} {:>9.1} {:>11.1} {:>10.0} {:>8.1} {:>14} {:>8.2}",
            r.device.to_uppercase(),
            format!("{}²", r.box_size),
            r.pixel_size,
            rotations.join("/"),
            r.start_seconds,
            r.seconds_per_iteration,
            r.images_per_second,
            r.wall_seconds,
            r.peak_rss_mib.map_or("–".into(), |m| format!("{m:.0}")),
            r.ratio,
        );
    }
    for (device, why) in &c.not_timed {
        println!("{device}: not timed ({why})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iteration(iteration: u64, seconds: f64) -> Iteration {
        Iteration {
            iteration,
            seconds,
            rotations: 100,
            r_max: 5.0,
            angular_step_deg: 15.0,
        }
    }

    fn fake(device: &str, box_size: usize, per_iteration: f64) -> Row {
        row(
            device,
            box_size,
            EXTENT_A / box_size as f64,
            2000,
            vec![
                iteration(0, 10.0),
                iteration(1, per_iteration),
                iteration(2, per_iteration),
            ],
            30.0,
            Some(500.0),
            vec![0.25, 0.75],
        )
        .unwrap()
    }

    #[test]
    fn sizes_are_sorted_deduplicated_and_checked() {
        assert_eq!(parse_sizes("128,32,64,32").unwrap(), [32, 64, 128]);
        assert_eq!(parse_sizes(" 64 ").unwrap(), [64]);
        for bad in ["", "32,", "33", "8", "x", "-32"] {
            let err = parse_sizes(bad).unwrap_err().to_string();
            assert!(err.contains("--sizes"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_history_splits_into_the_start_and_em_iterations() {
        let model = json!({"history": [
            {"iteration": 0, "seconds": 12.0, "rotations": 0, "r_max": 4.8, "angular_step_deg": 15.0,
             "log_likelihood": -1.0},
            {"iteration": 1, "seconds": 3.0, "rotations": 4608, "r_max": 4.8, "angular_step_deg": 15.0},
            {"iteration": 2, "seconds": 5.0, "rotations": 36864, "r_max": 6.0, "angular_step_deg": 7.5},
        ]});
        let h = history(&model, Path::new("m.json")).unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[2].rotations, 36864);
        let r = row("cpu", 32, 5.0, 2000, h, 25.0, None, vec![]).unwrap();
        assert_eq!(r.start_seconds, 12.0);
        assert_eq!(r.seconds_per_iteration, 4.0);
        assert_eq!(r.images_per_second, 500.0);
        let doc = row_json(&r, 32);
        assert!(doc["iterations"][0]["images_per_second"].is_null());
        assert_eq!(doc["iterations"][1]["images_per_second"], 2000.0 / 3.0);
        // Errors name the file and what is missing.
        let err = history(&json!({}), Path::new("m.json")).unwrap_err();
        assert!(err.to_string().contains("m.json"), "{err}");
        let err = history(&json!({"history": [{"iteration": 0}]}), Path::new("m.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("seconds"), "{err}");
        let only_start = vec![iteration(0, 1.0)];
        let err = row("cpu", 32, 5.0, 10, only_start, 1.0, None, vec![]).unwrap_err();
        assert!(err.to_string().contains("no EM iteration"), "{err}");
    }

    #[test]
    fn json_holds_rows_ratios_and_relion() {
        let mut rows = vec![
            fake("cpu", 32, 2.0),
            fake("cpu", 64, 8.0),
            fake("cuda", 32, 0.5),
            fake("cuda", 64, 1.0),
        ];
        set_ratios(&mut rows);
        let c = Classify {
            options: Options {
                sizes: vec![32, 64],
                ..Options::new(false)
            },
            threads: 2,
            relion: RELION_ABSENT.into(),
            structures: json!("built-in phantom"),
            rows,
            not_timed: vec![],
        };
        let doc = json(json!({"cpu": "x"}), &c);
        assert_eq!(doc["machine"]["cpu"], "x");
        assert_eq!(doc["relion"], "absent (apt-get install relion)");
        assert_eq!(doc["sizes"], json!([32, 64]));
        assert_eq!(doc["settings"]["images"], IMAGES);
        assert_eq!(doc["settings"]["threads"], 2);
        assert_eq!(doc["ratios"]["to_reference_box"]["cpu"]["64/32"], 4.0);
        assert_eq!(doc["ratios"]["to_reference_box"]["cuda"]["64/32"], 2.0);
        assert_eq!(doc["ratios"]["cpu_over_cuda"]["32"], 4.0);
        assert_eq!(doc["ratios"]["cpu_over_cuda"]["64"], 8.0);
        let rows = doc["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1]["box"], 64);
        assert_eq!(rows[1]["pixel_size_A"], 2.5);
        assert_eq!(rows[1]["seconds_per_iteration"], 8.0);
        assert_eq!(rows[1]["images_per_second"], 250.0);
        assert_eq!(rows[1]["pixel_ratio"], 4.0);
        assert_eq!(rows[1]["iterations"].as_array().unwrap().len(), 3);
        let s = summary(&c);
        assert_eq!(s["rows"][3]["device"], "cuda");
        assert_eq!(s["rows"][3]["ratio_to_reference_box"], 2.0);
        assert_eq!(s["details"], "bench-results/classify.json");
    }

    #[test]
    fn relion_version_line_is_found() {
        let out = "RELION version: 3.1.3-commit-abc\nPrecision: BASE=double\n";
        assert_eq!(
            relion_version(out).as_deref(),
            Some("RELION version: 3.1.3-commit-abc")
        );
        assert_eq!(relion_version("usage: relion_refine …"), None);
    }
}
