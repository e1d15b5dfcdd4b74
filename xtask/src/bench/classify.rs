//! `cargo xtask bench --classify`: the cost of the classification stage, `multicryogan
//! classify` (3D classification with the poses marginalised), at several image boxes (32², 64²
//! and 128² by default), its quality against the truth, and RELION 3.1 beside it.
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
//!
//! Each run is scored against the set's truth ([`score`]): π, the share of particles in the
//! class of their true state under the better of the two labellings of the classes, and each
//! class map's FSC against the state that labelling gives it (no alignment: the reference, and
//! so every class, is in the truth's frame).
//!
//! Where `relion_refine` is on the `PATH`, RELION 3.1's 3D classification runs on the smallest
//! box's set, from the same reference, with the same threads, and is timed and scored the same
//! way ([`relion`]); where it is absent, or fails, classify.json and the table say so and our
//! figures stand.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use mcg_eval::{FscConfig, fsc};
use mcg_formats::mrc;
use mcg_formats::star::{self, StarOptions};
use mcg_physics::Volume;
use serde_json::{Value, json};

use super::step_cost::DeviceChoice;
use super::{Figure, measured};

pub mod relion;

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
/// The states' shares in the hsp90-discrete preset: closed (beta_00), open (beta_20), in the
/// order of the truth's `_rlnClassNumber` (the preset's categorical values, β = 0° then 20°).
const SHARES: [(&str, f32); 2] = [("beta_00.mrc", 0.25), ("beta_20.mrc", 0.75)];
/// Our classify's outputs in its folder (mcg-classify's `map_name` and `PARTICLES_STAR`;
/// xtask does not link mcg-classify, which needs libtorch).
const OUR_PARTICLES: &str = "particles.star";
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
    /// The run against the truth, or why it could not be scored.
    pub quality: Result<Quality, String>,
}

/// Everything the classification benchmark measured.
pub struct Classify {
    pub options: Options,
    pub threads: usize,
    /// `relion_refine --version`'s line, or that it is absent ([`RELION_ABSENT`]).
    pub relion: String,
    /// RELION's 3D classification beside ours (or why it did not run).
    pub relion_run: relion::Outcome,
    /// Ours with the default settings, to convergence, on the smallest box's set on the
    /// first device: the run whose quality and time stand beside RELION's (the rows' runs
    /// stop after [`ITERATIONS`] iterations, to time them).
    pub converged: Option<Row>,
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
        quality: Err("not scored".into()),
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

/// The truth a classification of a set is scored against.
pub struct Truth {
    /// Each particle's true state (0-based, an index into `states`), in file order.
    pub classes: Vec<usize>,
    /// The states' names (`beta_00`) and maps, in the order of their class numbers.
    pub states: Vec<(String, Volume)>,
}

impl Truth {
    /// The truth of the set in `set`: its particles.star's `_rlnClassNumber` and the maps in
    /// ground_truth/ of the states in [`SHARES`].
    pub fn load(set: &Path) -> Result<Self> {
        let classes = classes_of(&set.join("particles.star"), SHARES.len())?;
        let states = SHARES
            .iter()
            .map(|(file, _)| {
                let p = set.join("ground_truth").join(file);
                let map = mrc::read_volume(&p, None)
                    .with_context(|| format!("reading {}", p.display()))?;
                Ok((file.trim_end_matches(".mrc").to_string(), map))
            })
            .collect::<Result<_>>()?;
        Ok(Self { classes, states })
    }

    /// Each state's share of the particles.
    pub fn shares(&self) -> Vec<f64> {
        let mut counts = vec![0usize; self.states.len()];
        for &j in &self.classes {
            counts[j] += 1;
        }
        let n = self.classes.len().max(1) as f64;
        counts.iter().map(|&c| c as f64 / n).collect()
    }
}

/// Each particle's `_rlnClassNumber` (0-based) in the particle STAR file `path`: the truth's,
/// our classify's or RELION's `_data.star`, read by mcg-formats' particle reader. An error
/// names the file and the particle whose class is missing or not in 1 … `k`.
pub fn classes_of(path: &Path, k: usize) -> Result<Vec<usize>> {
    let set = star::read_particles(path, &StarOptions::default())
        .with_context(|| format!("reading {}", path.display()))?;
    set.particles
        .iter()
        .enumerate()
        .map(|(i, p)| match p.class {
            Some(c) if c >= 1 && c as usize <= k => Ok(c as usize - 1),
            other => bail!(
                "{}: particle {}: _rlnClassNumber {}, expected a class from 1 to {k}",
                path.display(),
                i + 1,
                other.map_or("missing".into(), |c| c.to_string())
            ),
        })
        .collect()
}

/// The share of particles whose class is their true state under the better of the two
/// labellings of two classes (class k is state k, or the classes swapped), and that labelling:
/// `states[k]` is class k's state. Ties keep class k as state k.
pub fn better_labelling(assigned: &[usize], truth: &[usize]) -> Result<(f64, [usize; 2])> {
    ensure!(
        assigned.len() == truth.len() && !truth.is_empty(),
        "{} classified particles against {} true states, expected the same (non-zero) count",
        assigned.len(),
        truth.len()
    );
    ensure!(
        assigned.iter().chain(truth).all(|&c| c < 2),
        "a class or state beyond the two compared"
    );
    let same = assigned.iter().zip(truth).filter(|(a, t)| a == t).count();
    let n = truth.len() as f64;
    let (kept, swapped) = (same as f64 / n, (truth.len() - same) as f64 / n);
    Ok(if swapped > kept {
        (swapped, [1, 0])
    } else {
        (kept, [0, 1])
    })
}

/// One class of a classification against the truth.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassScore {
    /// 1-based.
    pub class: usize,
    /// The state the better labelling gives it.
    pub state: String,
    pub pi: f64,
    /// Where its FSC against that state first falls below 0.5, Å and as a fraction of Nyquist
    /// (`None`: it stays above to Nyquist).
    pub fsc_half_angstrom: Option<f64>,
    pub fsc_half_nyquist: Option<f64>,
    /// Its AreaFSC against every state, in the truth's order.
    pub area_fsc: Vec<f64>,
}

/// A classification against the truth.
#[derive(Debug, Clone, PartialEq)]
pub struct Quality {
    /// The share of particles in the class of their true state, under the better labelling.
    pub accuracy: f64,
    pub classes: Vec<ClassScore>,
    /// Each state's true share, in the truth's order.
    pub true_shares: Vec<f64>,
    /// The states' names, in the truth's order.
    pub states: Vec<String>,
}

/// Scores a two-class classification (`assigned`: each particle's class, 0-based; `pi`; the
/// class maps) against `truth` (see the module notes).
pub fn score(assigned: &[usize], pi: &[f64], maps: &[Volume], truth: &Truth) -> Result<Quality> {
    ensure!(
        pi.len() == CLASSES && maps.len() == CLASSES,
        "{} class probabilities and {} maps, expected {CLASSES} of each",
        pi.len(),
        maps.len()
    );
    let (accuracy, labelling) = better_labelling(assigned, &truth.classes)?;
    let cfg = FscConfig::default();
    let classes = maps
        .iter()
        .enumerate()
        .map(|(k, map)| {
            let (name, state) = &truth.states[labelling[k]];
            let half = fsc(map, state, &cfg)
                .with_context(|| format!("class {} against {name}", k + 1))?
                .resolution(0.5);
            let area_fsc = truth
                .states
                .iter()
                .map(|(_, s)| Ok(fsc(map, s, &cfg)?.area()))
                .collect::<Result<_>>()?;
            Ok(ClassScore {
                class: k + 1,
                state: name.clone(),
                pi: pi[k],
                fsc_half_angstrom: half.map(|r| r.angstrom),
                fsc_half_nyquist: half.map(|r| r.nyquist_fraction),
                area_fsc,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Quality {
        accuracy,
        classes,
        true_shares: truth.shares(),
        states: truth.states.iter().map(|(n, _)| n.clone()).collect(),
    })
}

/// A quality as classify.json holds it, or the reason there is none.
fn quality_json(q: &Result<Quality, String>) -> Value {
    let q = match q {
        Ok(q) => q,
        Err(why) => return json!({"error": why}),
    };
    json!({
        "accuracy": q.accuracy,
        "pi": q.classes.iter().map(|c| c.pi).collect::<Vec<_>>(),
        "true_shares": q.states.iter().zip(&q.true_shares)
            .map(|(s, f)| (s.clone(), json!(f))).collect::<serde_json::Map<_, _>>(),
        "classes": q.classes.iter().map(|c| json!({
            "class": c.class,
            "state": c.state,
            "pi": c.pi,
            "fsc_0.5_A": c.fsc_half_angstrom,
            "fsc_0.5_nyquist": c.fsc_half_nyquist,
            "area_fsc": q.states.iter().zip(&c.area_fsc)
                .map(|(s, a)| (s.clone(), json!(a))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "method": "accuracy: the share of particles in the class of their true state under the \
            better of the two labellings; each class's FSC (standard binning, no mask, no \
            alignment) against the state that labelling gives it",
    })
}

/// A quality in one line of the table.
fn quality_line(q: &Result<Quality, String>) -> String {
    let q = match q {
        Ok(q) => q,
        Err(why) => return format!("not scored: {why}"),
    };
    let classes: Vec<String> = q
        .classes
        .iter()
        .map(|c| {
            format!(
                "class {} = {} π {:.3}, FSC 0.5 {}",
                c.class,
                c.state,
                c.pi,
                match (c.fsc_half_angstrom, c.fsc_half_nyquist) {
                    (Some(a), Some(f)) => format!("{a:.1} Å ({f:.2} Nyquist)"),
                    _ => "beyond Nyquist".into(),
                }
            )
        })
        .collect();
    format!("{:.1} % right; {}", 100.0 * q.accuracy, classes.join("; "))
}

/// RELION's `relion_refine` where it is on the PATH: its version line (or that it is there but
/// gave none); [`RELION_ABSENT`] otherwise.
pub fn relion() -> String {
    if !relion_on_path() {
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

/// Whether `relion_refine` is on the PATH.
pub fn relion_on_path() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|dir| dir.join("relion_refine").is_file()))
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
        relion_run: relion::Outcome::Absent,
        converged: None,
        structures: Value::Null,
        rows: Vec::new(),
        not_timed: Vec::new(),
    };
    let mut sets = Vec::new();
    for &b in &o.sizes {
        let set = two_state_set(bin, work, b, o.images)?;
        c.structures = set.structures.clone();
        sets.push(set);
    }
    let devices = o.device.devices(super::gpu_names().is_some());
    if devices.iter().all(|(d, _)| *d != "cuda") && o.device == DeviceChoice::Auto {
        c.not_timed
            .push(("cuda".into(), "no NVIDIA GPU listed by nvidia-smi".into()));
    }
    for (device, required) in devices {
        let mut rows = Vec::new();
        let timed: Result<()> = sets.iter().try_for_each(|set| {
            rows.push(time_box(
                bin,
                work,
                set,
                o.images,
                device,
                threads,
                Some(ITERATIONS),
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
    // Ours to convergence on the smallest box's set, on the first device that was timed.
    if let Some(device) = c.rows.first().map(|r| r.device.clone()) {
        match time_box(bin, work, &sets[0], o.images, &device, threads, None) {
            Ok(r) => c.converged = Some(r),
            Err(e) => {
                eprintln!("bench: classify to convergence could not be run: {e:#}");
                c.not_timed
                    .push((format!("{device} to convergence"), format!("{e:#}")));
            }
        }
    }
    // RELION on the smallest box's set, after our figures: its failure leaves them standing.
    if relion_on_path() {
        c.relion_run = relion::run(&sets[0], work, o.images, threads, &c.relion);
    }
    let mut figures: Vec<Figure> = c
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
    if let Some(r) = &c.converged {
        figures.push(Figure {
            name: format!(
                "classify {}² ({} images, 2 classes) to convergence, {}: seconds",
                r.box_size,
                r.images,
                r.device.to_uppercase()
            ),
            value: r.wall_seconds,
            unit: "s",
            target: None,
            detail: row_json(r, o.sizes[0]),
        });
    }
    if let relion::Outcome::Ran(r) = &c.relion_run {
        figures.push(Figure {
            name: format!(
                "RELION 3D classification {}² ({} images, 2 classes, {} iterations): seconds",
                r.box_size,
                r.images,
                relion::ITERATIONS
            ),
            value: r.seconds,
            unit: "s",
            target: None,
            detail: c.relion_run.json(),
        });
    }
    Ok((figures, c))
}

/// One box's two-state set.
pub struct Set {
    pub box_size: usize,
    /// The set's folder.
    pub dir: PathBuf,
    /// Its particles.star.
    pub star: PathBuf,
    /// The reference written beside it (the ground-truth states' mean, weighted by their
    /// shares).
    pub reference: PathBuf,
    /// The structures' source (the synth manifest's `structures`).
    pub structures: Value,
    pub truth: Truth,
}

/// The two-state set of box `b`, with its reference and truth.
fn two_state_set(bin: &Path, work: &Path, b: usize, images: usize) -> Result<Set> {
    let out = work.join(format!("classify_data_{b}"));
    let (b_s, apix) = (b.to_string(), (EXTENT_A / b as f64).to_string());
    eprintln!("bench: classify at {b}²: synthesising {images} Hsp90 images at {apix} Å");
    super::discrete_set(bin, &out, images, &["--box", &b_s, "--apix", &apix])?;
    let truth = Truth::load(&out)?;
    let reference = out.join("reference.mrc");
    write_reference(&truth, &reference)?;
    let structures = std::fs::read_to_string(out.join("manifest.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map_or(Value::Null, |m| m["settings"]["structures"].clone());
    Ok(Set {
        box_size: b,
        star: out.join("particles.star"),
        dir: out,
        reference,
        structures,
        truth,
    })
}

/// Writes to `path` the mean of the truth's states, weighted by [`SHARES`].
fn write_reference(truth: &Truth, path: &Path) -> Result<()> {
    let [(_, first), (_, second)] = &truth.states[..] else {
        bail!("{} states, expected 2", truth.states.len());
    };
    let [(_, w0), (_, w1)] = SHARES;
    ensure!(
        first.data().dim() == second.data().dim(),
        "the ground-truth states differ in size"
    );
    let mut mean = first.clone();
    mean.data_mut()
        .zip_mut_with(second.data(), |a, &b| *a = w0 * *a + w1 * b);
    mrc::write_volume(path, &mean).with_context(|| format!("writing {}", path.display()))
}

/// Reads the class maps `paths` (a classification's, ours or RELION's).
fn read_maps(paths: &[PathBuf]) -> Result<Vec<Volume>> {
    paths
        .iter()
        .map(|p| mrc::read_volume(p, None).with_context(|| format!("reading {}", p.display())))
        .collect()
}

/// Our classify's run in `run` against the truth: its particles.star's classes, model.json's
/// π and its class maps.
fn score_ours(run: &Path, pi: &[f64], truth: &Truth) -> Result<Quality> {
    let assigned = classes_of(&run.join(OUR_PARTICLES), CLASSES)?;
    let maps: Vec<PathBuf> = (1..=CLASSES)
        .map(|k| run.join(format!("class_{k:03}.mrc")))
        .collect();
    score(&assigned, pi, &read_maps(&maps)?, truth)
}

/// Runs classify on one set, for `iterations` EM iterations (`None`: the defaults, to
/// convergence), and reads its model.json.
#[allow(clippy::too_many_arguments)]
fn time_box(
    bin: &Path,
    work: &Path,
    set: &Set,
    images: usize,
    device: &str,
    threads: usize,
    iterations: Option<usize>,
) -> Result<Row> {
    let b = set.box_size;
    let suffix = if iterations.is_some() {
        ""
    } else {
        "_converged"
    };
    let run = work.join(format!("classify_{b}_{device}{suffix}"));
    std::fs::remove_dir_all(&run).ok();
    let (star, reference) = (set.star.to_string_lossy(), set.reference.to_string_lossy());
    let (run_s, threads_s, classes) = (
        run.to_string_lossy().into_owned(),
        threads.to_string(),
        CLASSES.to_string(),
    );
    let iterations_s = iterations.map(|i| i.to_string());
    eprintln!(
        "bench: classify at {b}² on {device}: {images} images, {CLASSES} classes, {}, \
         {threads} threads",
        iterations.map_or("to convergence".into(), |i| format!("{i} iterations"))
    );
    let mut args = vec![
        "classify",
        "--particles",
        &star,
        "--reference",
        &reference,
        "--classes",
        &classes,
        "--out",
        &run_s,
        "--threads",
        &threads_s,
        "--device",
        device,
        "--quiet",
    ];
    if let Some(i) = &iterations_s {
        args.extend(["--iterations", i.as_str()]);
    }
    let m = measured(bin, &args)?;
    let path = run.join("model.json");
    let model: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))?;
    let pi: Vec<f64> = model["pi"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let pixel_size = model["apix"].as_f64().unwrap_or(EXTENT_A / b as f64);
    let quality = score_ours(&run, &pi, &set.truth).map_err(|e| format!("{e:#}"));
    let mut r = row(
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
    r.quality = quality;
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
        "seconds": r.wall_seconds,
        "quality": quality_json(&r.quality),
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

/// classify.json: the machine, the settings, every row with its quality, the ratios, and
/// RELION's run beside ours (or why it did not run).
pub fn json(machine: Value, c: &Classify) -> Value {
    let reference = c.options.sizes[0];
    json!({
        "machine": machine,
        "relion": c.relion_run.json(),
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
        "to_convergence": c.converged.as_ref().map(|r| row_json(r, reference)),
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
        "relion": c.relion_run.summary(),
        "to_convergence": c.converged.as_ref().map(|r| json!({
            "device": r.device, "box": r.box_size, "iterations": r.history.len().saturating_sub(1),
            "seconds": r.wall_seconds, "accuracy": r.quality.as_ref().ok().map(|q| q.accuracy),
            "pi": r.pi,
        })),
        "rows": c.rows.iter().map(|r| json!({
            "device": r.device, "box": r.box_size,
            "seconds_per_iteration": r.seconds_per_iteration, "start_seconds": r.start_seconds,
            "images_per_second": r.images_per_second, "peak_rss_mib": r.peak_rss_mib,
            "ratio_to_reference_box": r.ratio,
            "accuracy": r.quality.as_ref().ok().map(|q| q.accuracy),
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
    println!(
        "\nagainst the truth (π, accuracy under the better labelling, FSC 0.5 of each class against its state):"
    );
    for r in &c.rows {
        println!(
            "ours {} {}², {ITERATIONS} EM iterations, {:.0} s: {}",
            r.device.to_uppercase(),
            r.box_size,
            r.wall_seconds,
            quality_line(&r.quality)
        );
    }
    if let Some(r) = &c.converged {
        println!(
            "ours {} {}², to convergence ({} EM iterations), {:.0} s: {}",
            r.device.to_uppercase(),
            r.box_size,
            r.history.len().saturating_sub(1),
            r.wall_seconds,
            quality_line(&r.quality)
        );
    }
    println!("{}", c.relion_run.line());
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
            relion_run: relion::Outcome::Absent,
            converged: None,
            structures: json!("built-in phantom"),
            rows,
            not_timed: vec![],
        };
        let doc = json(json!({"cpu": "x"}), &c);
        assert_eq!(doc["machine"]["cpu"], "x");
        assert_eq!(doc["relion"]["status"], "absent");
        assert!(
            doc["relion"]["reason"]
                .as_str()
                .unwrap()
                .contains("apt-get install relion")
        );
        assert_eq!(summary(&c)["relion"]["status"], "absent");
        // Unscored rows say why.
        assert_eq!(doc["rows"][0]["quality"]["error"], "not scored");
        assert!(summary(&c)["rows"][0]["accuracy"].is_null());
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
        // The run to convergence stands beside RELION's when there is one.
        assert!(doc["to_convergence"].is_null() && s["to_convergence"].is_null());
        let c = Classify {
            converged: Some(fake("cpu", 32, 3.0)),
            ..c
        };
        let (doc, s) = (json(json!({}), &c), summary(&c));
        assert_eq!(doc["to_convergence"]["box"], 32);
        assert_eq!(doc["to_convergence"]["seconds_per_iteration"], 3.0);
        assert_eq!(
            (
                s["to_convergence"]["device"].as_str(),
                s["to_convergence"]["iterations"].as_u64()
            ),
            (Some("cpu"), Some(2))
        );
        assert_eq!(s["details"], "bench-results/classify.json");
    }

    /// A scratch folder of this test process, emptied first.
    pub(super) fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-classify-{}-{name}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Two distinct small states (16³ of 10 Å): a blob pair, and the pair with one blob moved.
    pub(super) fn two_states(classes: Vec<usize>) -> Truth {
        let blob = |centre: [f64; 3]| mcg_physics::Blob {
            centre,
            amplitude: 1.0,
            sigma: 1.5,
        };
        let state = |moved: f64| {
            Volume::gaussian_blobs(16, 10.0, &[blob([-3.0, 0.0, 0.0]), blob([3.0, moved, 1.0])])
                .unwrap()
        };
        Truth {
            classes,
            states: vec![("closed".into(), state(0.0)), ("open".into(), state(4.0))],
        }
    }

    #[test]
    fn the_better_labelling_swaps_classes_when_that_is_right() {
        let truth = [0, 0, 1, 1, 1];
        assert_eq!(
            better_labelling(&[0, 0, 1, 1, 0], &truth).unwrap(),
            (0.8, [0, 1])
        );
        // Class 1 (index 0) holds the open particles: the swapped labelling is right 4 of 5.
        assert_eq!(
            better_labelling(&[1, 1, 0, 0, 1], &truth).unwrap(),
            (0.8, [1, 0])
        );
        // Everything in one class: the better labelling calls that class the majority's state.
        assert_eq!(
            better_labelling(&[1, 1, 1, 1, 1], &truth).unwrap(),
            (0.6, [0, 1])
        );
        assert_eq!(
            better_labelling(&[0, 0, 0, 0, 0], &truth).unwrap(),
            (0.6, [1, 0])
        );
        // A tie keeps class k as state k.
        assert_eq!(better_labelling(&[0, 1], &[0, 0]).unwrap(), (0.5, [0, 1]));
        assert!(better_labelling(&[0, 1], &[0, 1, 1]).is_err());
        assert!(better_labelling(&[], &[]).is_err());
        assert!(better_labelling(&[0, 2], &[0, 1]).is_err());
    }

    #[test]
    fn a_classification_is_scored_against_the_truth() {
        // Class 1 holds the open particles and the open map; class 2 the closed, one wrong.
        let truth = two_states(vec![0, 0, 1, 1, 1, 1]);
        let (closed, open) = (truth.states[0].1.clone(), truth.states[1].1.clone());
        let q = score(&[1, 1, 0, 0, 0, 1], &[0.5, 0.5], &[open, closed], &truth).unwrap();
        assert!((q.accuracy - 5.0 / 6.0).abs() < 1e-12, "{}", q.accuracy);
        assert_eq!(q.states, ["closed", "open"]);
        assert_eq!(q.true_shares, [2.0 / 6.0, 4.0 / 6.0]);
        assert_eq!(q.classes[0].state, "open");
        assert_eq!(q.classes[1].state, "closed");
        // Each map is its state: its FSC never falls below 0.5, and its AreaFSC against its
        // own state is 1, against the other less.
        assert_eq!(q.classes[0].fsc_half_angstrom, None);
        assert!((q.classes[0].area_fsc[1] - 1.0).abs() < 1e-6);
        assert!(
            q.classes[0].area_fsc[0] < 0.99,
            "{:?}",
            q.classes[0].area_fsc
        );
        assert!((q.classes[1].area_fsc[0] - 1.0).abs() < 1e-6);
        // A map that is not its state crosses 0.5 at a finite resolution.
        let wrong = truth.states[0].1.clone();
        let q = score(
            &[0, 0, 1, 1, 1, 1],
            &[0.4, 0.6],
            &[wrong.clone(), wrong],
            &truth,
        )
        .unwrap();
        assert_eq!(q.accuracy, 1.0);
        let r = q.classes[1]
            .fsc_half_angstrom
            .expect("closed against open crosses 0.5");
        assert!(r > 20.0 && r.is_finite(), "{r}");
        let f = q.classes[1].fsc_half_nyquist.unwrap();
        assert!((f - 20.0 / r).abs() < 1e-9, "{f} {r}");
        let doc = quality_json(&Ok(q));
        assert_eq!(doc["accuracy"], 1.0);
        assert_eq!(doc["pi"], json!([0.4, 0.6]));
        assert_eq!(doc["true_shares"]["open"], 4.0 / 6.0);
        assert_eq!(doc["classes"][1]["state"], "open");
        assert!(doc["classes"][0]["fsc_0.5_A"].is_null());
        assert_eq!(doc["classes"][1]["fsc_0.5_A"], r);
        assert!(doc["classes"][1]["area_fsc"]["open"].as_f64().unwrap() < 0.99);
        assert!((doc["classes"][1]["area_fsc"]["closed"].as_f64().unwrap() - 1.0).abs() < 1e-6);
        // Wrong counts are refused.
        let m = truth.states[0].1.clone();
        assert!(score(&[0, 1], &[0.5, 0.5], &[m.clone(), m.clone()], &truth).is_err());
        assert!(score(&[0; 6], &[1.0], &[m], &truth).is_err());
    }

    #[test]
    fn the_reference_is_the_states_mean_weighted_by_their_shares() {
        let truth = two_states(vec![0, 1]);
        let dir = scratch("reference");
        let path = dir.join("reference.mrc");
        write_reference(&truth, &path).unwrap();
        let mean = mrc::read_volume(&path, None).unwrap();
        let (closed, open) = (truth.states[0].1.data(), truth.states[1].1.data());
        let at = [8, 12, 11];
        let expected = 0.25 * closed[at] + 0.75 * open[at];
        assert!(
            open[at] > 0.1 && closed[at] < 0.05,
            "{} {}",
            open[at],
            closed[at]
        );
        assert!((mean.data()[at] - expected).abs() < 1e-6);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A RELION 3.1 `_data.star` as relion_refine writes it (columns and layout of a 32² run,
    /// three particles).
    pub(super) const RELION_DATA_STAR: &str = "
# version 30001

data_optics

loop_ 
_rlnOpticsGroup #1 
_rlnOpticsGroupName #2 
_rlnAmplitudeContrast #3 
_rlnSphericalAberration #4 
_rlnVoltage #5 
_rlnImagePixelSize #6 
_rlnImageSize #7 
_rlnImageDimensionality #8 
           1 opticsGroup1     0.100000     2.700000   300.000000     5.000000           32            2 
 

# version 30001

data_particles

loop_ 
_rlnImageName #1 
_rlnOpticsGroup #2 
_rlnDefocusU #3 
_rlnDefocusV #4 
_rlnDefocusAngle #5 
_rlnPhaseShift #6 
_rlnCtfBfactor #7 
_rlnCtfScalefactor #8 
_rlnOriginXAngst #9 
_rlnOriginYAngst #10 
_rlnGroupNumber #11 
_rlnAngleRot #12 
_rlnAngleTilt #13 
_rlnAnglePsi #14 
_rlnClassNumber #15 
_rlnNormCorrection #16 
_rlnLogLikeliContribution #17 
_rlnMaxValueProbDistribution #18 
_rlnNrOfSignificantSamples #19 
000001@particles.mrcs            1 15337.822749 15337.822749     0.000000     0.000000     0.000000     1.000000     0.000000     0.000000            1   -45.000000    97.180756   135.000000            2     0.987105 4.152341e+03     0.412233           11 
000002@particles.mrcs            1 15259.904999 15259.904999     0.000000     0.000000     0.000000     1.000000     1.250000    -1.250000            1   112.500000    50.768300   -52.500000            1     1.011327 4.147980e+03     0.198120           27 
000003@particles.mrcs            1 11211.663891 11211.663891     0.000000     0.000000     0.000000     1.000000     0.000000     0.000000            1   -157.500000    33.557310    22.500000            2     0.994261 4.149002e+03     0.301010           15 
 
";

    #[test]
    fn classes_are_read_from_relions_data_star() {
        let dir = scratch("data-star");
        let path = dir.join("run_it025_data.star");
        std::fs::write(&path, RELION_DATA_STAR).unwrap();
        assert_eq!(classes_of(&path, 2).unwrap(), [1, 0, 1]);
        // Class 2 is beyond one class; RELION's iteration 0 writes class 0 for every particle.
        let err = classes_of(&path, 1).unwrap_err().to_string();
        assert!(
            err.contains("particle 1") && err.contains("_rlnClassNumber 2"),
            "{err}"
        );
        std::fs::write(
            &path,
            RELION_DATA_STAR.replace("            2     0.987105", "            0     0.987105"),
        )
        .unwrap();
        let err = classes_of(&path, 2).unwrap_err().to_string();
        assert!(
            err.contains("run_it025_data.star") && err.contains("_rlnClassNumber 0"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
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
