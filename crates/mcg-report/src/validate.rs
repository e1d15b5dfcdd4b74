//! Gold-standard validation without a ground truth ([`validate`]): two runs trained on
//! independent halves of a particle set (RELION's gold standard) are sampled along their
//! landscapes, B's maps put onto A's by one rigid transform, B's conformations matched to A's
//! (B's α by best match for a continuous latent, a permutation of the components for a
//! mixture), and the FSC between matched conformations measured with the report's settings.
//! The halves' FSCCC matrices and state probabilities say how well their landscapes agree.
//!
//! The library call is [`validate`] (writes `validation.json`, the figures and
//! `validation.html`); [`sample_run`] and [`compare`] are its two halves, for callers that
//! hold the maps themselves; `report --half-set` adds the same comparison to a report.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use mcg_dataset::guard;
use mcg_dataset::monitor::Monitor;
use mcg_eval::landscape::{cell_midpoints, discrete_probabilities, fsccc_positions};
use mcg_eval::{AlignConfig, FscConfig, FscCurve, Transform, align, fsc, fsccc};
use mcg_physics::Volume;
use mcg_train::device::{self, DeviceChoice};
use mcg_train::models::Architecture;
use mcg_train::run::{DataDescription, RunDir, TrainedRun, load_run, train_config, volume_at};
use ndarray::{Array2, Array3, s};

use crate::metrics::{
    Euler, GoldSummary, HalfAlignment, HalfFsc, HalfFsccc, HalfProbabilities, MatchedPoint,
    ResolutionRecord, Validation,
};
use crate::plot;
use crate::report::{Section, escape, files_in, img_tag, paper_rule, rows_of, write_html};

/// What to validate and where. [`ValidateSettings::new`] gives the CLI's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidateSettings {
    /// The run of the first half set: the frame everything is compared in.
    pub run_a: PathBuf,
    /// The run of the second half set.
    pub run_b: PathBuf,
    /// Output folder (created if missing).
    pub out: PathBuf,
    /// L: a continuous landscape is sampled at α = m/L, m = 0 … L, and its probabilities
    /// counted on L cells (as the report does).
    pub l: usize,
    /// Where G is sampled.
    pub device: DeviceChoice,
}

impl ValidateSettings {
    /// Runs `run_a` and `run_b` validated into `out`, L = 20, on the GPU when one is usable.
    pub fn new(
        run_a: impl Into<PathBuf>,
        run_b: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        Self {
            run_a: run_a.into(),
            run_b: run_b.into(),
            out: out.into(),
            l: 20,
            device: DeviceChoice::Auto,
        }
    }
}

/// The files [`validate`] writes in its folder.
pub const OUTPUTS: [&str; 4] = [
    "validation.json",
    "fsc_halves.png",
    "fsccc_halves.png",
    "validation.html",
];

/// What a run's landscape is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// G along a continuous latent α ∈ [0, 1] (the CNN and voxel generators).
    Continuous,
    /// A mixture of components with probabilities π.
    Mixture,
    /// One volume (single mode).
    Single,
}

impl Kind {
    /// `continuous`, `mixture` or `single`, as `validation.json` names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Continuous => "continuous",
            Self::Mixture => "mixture",
            Self::Single => "single",
        }
    }

    fn of(architecture: Architecture) -> Self {
        match architecture {
            Architecture::Single => Self::Single,
            Architecture::Mixture => Self::Mixture,
            Architecture::Cnn(_) | Architecture::Voxel | Architecture::Path => Self::Continuous,
        }
    }
}

/// A run's landscape sampled for validation ([`sample_run`]).
#[derive(Debug, Clone)]
pub struct Landscape {
    /// What it is.
    pub kind: Kind,
    /// Its conformations: G at α = m/L (continuous), each component (mixture), or the one
    /// volume (single).
    pub maps: Vec<Volume>,
    /// The latent position of each map (a component's: the middle of its cell of α).
    pub alphas: Vec<f64>,
    /// The mixture's probabilities π, one per map; `[1]` for a single volume; empty for a
    /// continuous landscape.
    pub probabilities: Vec<f64>,
    /// Continuous landscapes: G at the L cell midpoints (α = (k + ½)/L), from which the
    /// paper's rule counts the probabilities; empty otherwise.
    pub cells: Vec<Volume>,
}

/// Validates run B against run A (see the module notes): checks that they share the box, the
/// pixel size and the kind of landscape, samples both, compares them ([`compare`]) and writes
/// `validation.json`, `fsc_halves.png`, `fsccc_halves.png` and `validation.html` into
/// `s.out`. Every input is read and checked before anything is written.
pub fn validate(s: &ValidateSettings, progress: &dyn Monitor) -> Result<Validation> {
    ensure!(s.l >= 2, "--l {}: expected at least 2", s.l);
    check_compatible(&s.run_a, &s.run_b)?;
    let inputs: Vec<PathBuf> = [&s.run_a, &s.run_b]
        .into_iter()
        .flat_map(|dir| files_in(dir))
        .collect();
    guard::refuse_writing_over_inputs(&inputs, &s.out, OUTPUTS, "the validation's")?;
    let bar = progress.bar(3, "validate");
    let dev = device::select(s.device)?;
    let a = load(&s.run_a, dev)?;
    let landscape_a = sample_run(&a, s.l)?;
    bar.inc(1);
    let v = against(&s.run_a, &landscape_a, &s.run_b, s.l, dev)?;
    bar.inc(1);
    std::fs::create_dir_all(&s.out).with_context(|| format!("creating {}", s.out.display()))?;
    guard::write_json_atomic(&s.out.join("validation.json"), &v)?;
    let section = section(&v, &s.out)?;
    let (a, b) = (escape(&v.run_a), escape(&v.run_b));
    write_html(
        &s.out.join("validation.html"),
        &format!("multicryogan validation: {a} and {b}"),
        "multicryogan validation",
        &format!(
            "Runs: <code>{a}</code> (A) and <code>{b}</code> (B). Numbers: <code>validation.json</code>."
        ),
        &[section],
    )?;
    bar.finish();
    Ok(v)
}

/// Refuses, naming the run folder at fault, a run compared with itself, two runs trained on the
/// same particles rather than on two halves (as their `config.json` record it), and two runs
/// whose boxes, pixel sizes or kinds of landscape (and mixtures' component counts) differ:
/// their maps cannot be compared. Reads only their `config.json`.
pub fn check_compatible(run_a: &Path, run_b: &Path) -> Result<()> {
    let same_folder = match (run_a.canonicalize(), run_b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => run_a == run_b,
    };
    if same_folder {
        bail!(
            "{}: the run compared with itself (every FSC would reach Nyquist): the half-set \
             validation needs two runs, each trained on its own half of the particles",
            run_a.display()
        );
    }
    let read = |run: &Path| -> Result<(usize, f64, Kind, usize, DataDescription)> {
        let doc = RunDir::new(run)
            .read_config()
            .with_context(|| format!("reading the run {}", run.display()))?;
        let config = train_config(&doc)
            .with_context(|| format!("{}: field train", RunDir::new(run).config().display()))?;
        let model = &config.model;
        Ok((
            model.box_size,
            doc.data.pixel_size,
            Kind::of(model.architecture()),
            model.components,
            doc.data,
        ))
    };
    let (box_a, apix_a, kind_a, k_a, data_a) = read(run_a)?;
    let (box_b, apix_b, kind_b, k_b, data_b) = read(run_b)?;
    if let Some(particles) = same_particles(&data_a, &data_b) {
        bail!(
            "{}: trained on the same particles as {} ({particles}), not on the other half: \
             the half-set validation needs two runs on the two halves of a set (train \
             --half-sets makes them)",
            run_b.display(),
            run_a.display()
        );
    }
    let (a, b) = (run_a.display(), run_b.display());
    let why = "the two half-set runs must share the box, the pixel size and the kind of landscape";
    if box_a != box_b {
        bail!("{b}: a box of {box_b} voxels, but {a} has {box_a}: {why}");
    }
    if (apix_a - apix_b).abs() > 1e-6 * apix_a.abs().max(apix_b.abs()) {
        bail!("{b}: a pixel size of {apix_b} Å, but {a} has {apix_a} Å: {why}");
    }
    if kind_a != kind_b {
        bail!(
            "{b}: a {} landscape, but {a} has a {} one: {why}",
            kind_b.name(),
            kind_a.name()
        );
    }
    if kind_a == Kind::Mixture && k_a != k_b {
        bail!("{b}: a mixture of {k_b} components, but {a} has {k_a}: {why}");
    }
    Ok(())
}

/// The particles two runs were both trained on, as their `config.json` records them: the same
/// particle file and the same half, or either run on the whole set; `None` when they were
/// trained on different halves or on different files.
fn same_particles(a: &DataDescription, b: &DataDescription) -> Option<String> {
    let file = |d: &DataDescription| {
        std::fs::canonicalize(&d.particles).unwrap_or_else(|_| PathBuf::from(&d.particles))
    };
    if a.particles != b.particles && file(a) != file(b) {
        return None;
    }
    match (a.half_set, b.half_set) {
        (Some(x), Some(y)) if x != y => None,
        (Some((h, _)), Some(_)) => Some(format!("{}, half {h}", a.particles)),
        _ => Some(a.particles.clone()),
    }
}

/// Samples a loaded run's landscape: for a continuous latent G at α = m/L (m = 0 … L) and at
/// the L cell midpoints; for a mixture each component (at the middle of its cell of α) and π;
/// for single mode the one volume.
pub fn sample_run(run: &TrainedRun, l: usize) -> Result<Landscape> {
    let trainer = &run.trainer;
    let kind = Kind::of(trainer.config.model.architecture());
    let at =
        |alpha: f64| -> Result<Volume> { Ok(volume_at(trainer, alpha as f32, run.apix as f32)?) };
    let many = |alphas: &[f64]| -> Result<Vec<Volume>> { alphas.iter().map(|&a| at(a)).collect() };
    Ok(match kind {
        Kind::Continuous => {
            let alphas = fsccc_positions(l);
            Landscape {
                kind,
                maps: many(&alphas)?,
                alphas,
                probabilities: Vec::new(),
                cells: many(&cell_midpoints(l))?,
            }
        }
        Kind::Mixture => {
            let pi: Vec<f32> = Vec::try_from(
                trainer
                    .generator()
                    .probabilities()
                    .to_device(tch::Device::Cpu),
            )
            .context("reading the mixture's probabilities")?;
            let pi: Vec<f64> = pi.into_iter().map(f64::from).collect();
            // Component k covers α in [Σ_{i<k} πᵢ, Σ_{i≤k} πᵢ).
            let alphas: Vec<f64> = pi
                .iter()
                .scan(0.0, |start, &p| {
                    let mid = *start + 0.5 * p;
                    *start += p;
                    Some(mid)
                })
                .collect();
            Landscape {
                kind,
                maps: many(&alphas)?,
                alphas,
                probabilities: pi,
                cells: Vec::new(),
            }
        }
        Kind::Single => Landscape {
            kind,
            maps: vec![at(0.0)?],
            alphas: vec![0.0],
            probabilities: vec![1.0],
            cells: Vec::new(),
        },
    })
}

/// Compares landscape B with landscape A (runs named `names`): aligns B's consensus onto A's
/// (both hands; the identity is kept when it correlates as well), applies that one transform
/// to every map of B, matches B's conformations to A's, and measures the FSC of each matched
/// pair and of the consensus maps, both FSCCC matrices and both halves' probabilities, with
/// the report's FSC settings (standard binning, no mask).
pub fn compare(a: &Landscape, b: &Landscape, names: [&str; 2]) -> Result<Validation> {
    let [name_a, name_b] = names;
    let first = |l: &Landscape, name: &str| -> Result<Volume> {
        l.maps
            .first()
            .cloned()
            .with_context(|| format!("{name}: no map in its landscape"))
    };
    let (a0, b0) = (first(a, name_a)?, first(b, name_b)?);
    ensure!(
        a.kind == b.kind && a.maps.len() == b.maps.len() && a.cells.len() == b.cells.len(),
        "{name_b}: a {} landscape of {} maps, but {name_a} has a {} one of {}",
        b.kind.name(),
        b.maps.len(),
        a.kind.name(),
        a.maps.len()
    );
    ensure!(
        a0.box_size() == b0.box_size() && a0.apix() == b0.apix(),
        "{name_b}: maps of {}³ voxels of {} Å, but {name_a} has {}³ of {} Å",
        b0.box_size(),
        b0.apix(),
        a0.box_size(),
        a0.apix()
    );
    let cfg = FscConfig::default();

    // One rigid transform, from the consensus maps.
    let (consensus_a, consensus_b) = (consensus(a)?, consensus(b)?);
    let found = align(&consensus_b, &consensus_a, &AlignConfig::default())
        .with_context(|| format!("aligning {name_b}'s consensus map to {name_a}'s"))?;
    // An alignment that correlates no better than none at all is not applied: it would only
    // blur B by an interpolation.
    let (transform, correlation) = if found.score > found.score_before + 1e-6 {
        (found.transform, found.score)
    } else {
        (Transform::identity(), found.score_before)
    };
    let maps_b: Vec<Volume> = b.maps.iter().map(|v| transform.apply(v)).collect();
    let cells_b: Vec<Volume> = b.cells.iter().map(|v| transform.apply(v)).collect();
    let consensus_b = transform.apply(&consensus_b);

    // Every pair of the two series, each map transformed once: A's FSCCC (top left), B's
    // (bottom right) and the cross-similarity S[i, j] = AreaFSC(A_i, B_j) (top right).
    let n = a.maps.len();
    let all: Vec<Volume> = a.maps.iter().chain(&maps_b).cloned().collect();
    let big = fsccc(&all, &cfg)?;
    let m_a = big.slice(s![..n, ..n]).to_owned();
    let m_b = big.slice(s![n.., n..]).to_owned();
    let cross = big.slice(s![..n, n..]).to_owned();

    // B's conformation matched to each of A's, and B's order made A's.
    let (matched, order_b, reversed, permutation) = match a.kind {
        Kind::Continuous => {
            let forward: f64 = (0..n).map(|i| cross[[i, i]]).sum();
            let backward: f64 = (0..n).map(|i| cross[[i, n - 1 - i]]).sum();
            let reversed = backward > forward;
            let order: Vec<usize> = if reversed {
                (0..n).rev().collect()
            } else {
                (0..n).collect()
            };
            (best_matches(&cross), order, reversed, None)
        }
        Kind::Mixture | Kind::Single => {
            let p = best_permutation(&cross);
            (
                p.clone(),
                p.clone(),
                false,
                Some(p).filter(|_| a.kind == Kind::Mixture),
            )
        }
    };
    let points: Vec<MatchedPoint> = matched
        .iter()
        .enumerate()
        .map(|(i, &j)| {
            Ok(MatchedPoint {
                label: match a.kind {
                    Kind::Mixture => format!("component {i}"),
                    _ => format!("α = {:.2}", a.alphas[i]),
                },
                alpha_a: a.alphas[i],
                alpha_b: b.alphas[j],
                component_b: (a.kind == Kind::Mixture).then_some(j),
                fsc: half_fsc(&fsc(&a.maps[i], &maps_b[j], &cfg)?),
            })
        })
        .collect::<Result<_>>()?;
    let consensus_fsc = fsc(&consensus_a, &consensus_b, &cfg)?;

    let fsccc_record = (a.kind != Kind::Single).then(|| {
        let m_b = Array2::from_shape_fn((n, n), |(i, j)| m_b[[order_b[i], order_b[j]]]);
        let diffs: Vec<f64> = m_a.iter().zip(&m_b).map(|(x, y)| (x - y).abs()).collect();
        HalfFsccc {
            a: rows_of(&m_a),
            b: rows_of(&m_b),
            mean_abs_difference: diffs.iter().sum::<f64>() / diffs.len().max(1) as f64,
            max_abs_difference: diffs.iter().fold(0.0, |m, &d| m.max(d)),
        }
    });
    let probabilities = match a.kind {
        Kind::Continuous => {
            let rule = |maps: &[Volume], cells: &[Volume]| -> Result<[f64; 3]> {
                let (ends_area, to_first, to_second) =
                    paper_rule(&maps[0], &maps[maps.len() - 1], cells, &cfg)?;
                let threshold = mcg_eval::landscape::midpoint_threshold(ends_area);
                let p = discrete_probabilities(&to_first, &to_second, threshold);
                Ok([p.first, p.second, p.transition])
            };
            let p_a = rule(&a.maps, &a.cells)?;
            let [first, second, transition] = rule(&maps_b, &cells_b)?;
            let p_b = if reversed {
                [second, first, transition]
            } else {
                [first, second, transition]
            };
            probability_record(
                format!(
                    "the paper's rule on {} cells of the latent segment (each belongs to the end it resembles by AreaFSC)",
                    a.cells.len()
                ),
                ["α = 0 end", "α = 1 end", "transition"]
                    .map(String::from)
                    .to_vec(),
                p_a.to_vec(),
                p_b.to_vec(),
            )
        }
        Kind::Mixture | Kind::Single => probability_record(
            if a.kind == Kind::Mixture {
                "the mixture's probabilities π".into()
            } else {
                "one volume".into()
            },
            (0..n).map(|k| format!("component {k}")).collect(),
            a.probabilities.clone(),
            order_b.iter().map(|&j| b.probabilities[j]).collect(),
        ),
    };

    let apix = f64::from(a0.apix());
    let golds: Vec<(f64, f64)> = points
        .iter()
        .map(|p| {
            (
                p.fsc.gold_standard_angstrom,
                p.fsc.gold_standard_nyquist_fraction,
            )
        })
        .collect();
    let resolution = GoldSummary {
        median_angstrom: median(golds.iter().map(|g| g.0)),
        median_nyquist_fraction: median(golds.iter().map(|g| g.1)),
        worst_angstrom: golds.iter().fold(0.0, |m, g| m.max(g.0)),
        worst_nyquist_fraction: golds.iter().fold(1.0, |m, g| m.min(g.1)),
        mean_area_fsc: points.iter().map(|p| p.fsc.fsc.area).sum::<f64>() / n as f64,
    };
    Ok(Validation {
        run_a: name_a.into(),
        run_b: name_b.into(),
        landscape: a.kind.name().into(),
        box_size: a0.box_size(),
        pixel_size: apix,
        alignment: HalfAlignment {
            euler_deg: Euler::of(&transform),
            flipped: transform.flipped,
            shift_angstrom: transform.shift_angstrom(apix),
            correlation_before: found.score_before,
            correlation,
        },
        reversed,
        permutation,
        frequency_nyquist_fraction: consensus_fsc.nyquist_fraction(),
        consensus: half_fsc(&consensus_fsc),
        points,
        resolution,
        fsccc: fsccc_record,
        probabilities,
    })
}

/// The result in one paragraph: the 0.143 resolutions and how well the landscapes agree.
pub fn summary(v: &Validation) -> String {
    let r = &v.resolution;
    let gold = |f: &HalfFsc| {
        if f.fsc.resolution_angstrom.gold.is_some() {
            format!(
                "{:.1} Å ({:.2} of Nyquist)",
                f.gold_standard_angstrom, f.gold_standard_nyquist_fraction
            )
        } else {
            format!("Nyquist ({:.1} Å) or better", f.gold_standard_angstrom)
        }
    };
    let mut parts = vec![format!(
        "Half-set FSC (B aligned onto A{}): the consensus maps reach 0.143 at {}",
        if v.alignment.flipped {
            ", hand flipped"
        } else {
            ""
        },
        gold(&v.consensus)
    )];
    match v.points.as_slice() {
        [] => {}
        [only] => parts.push(format!("the volume at {}", gold(&only.fsc))),
        [first, .., last] => {
            let what = if v.landscape == "mixture" {
                "components"
            } else {
                "points along α"
            };
            parts.push(format!(
                "over {} matched {what} the median is {:.1} Å ({:.2} of Nyquist) and the worst {:.1} Å; {} at {}, {} at {}",
                v.points.len(),
                r.median_angstrom,
                r.median_nyquist_fraction,
                r.worst_angstrom,
                first.label,
                gold(&first.fsc),
                last.label,
                gold(&last.fsc)
            ));
        }
    }
    let mut text = parts.join("; ") + ".";
    if v.landscape == "continuous" && v.reversed {
        text += " B's latent runs against A's (its α = 1 end is A's α = 0 end).";
    }
    if let Some(p) = &v.permutation {
        text += &format!(" A's components match B's {p:?}.");
    }
    if let Some(f) = &v.fsccc {
        text += &format!(
            " The halves' FSCCC matrices differ by {:.3} on average (at most {:.3})",
            f.mean_abs_difference, f.max_abs_difference
        );
        let p = &v.probabilities;
        let fmt = |x: &[f64]| {
            x.iter()
                .map(|v| format!("{:.1} %", 100.0 * v))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        text += &format!(
            "; their probabilities ({}) are {} in A and {} in B, at most {:.1} points apart.",
            p.states.join(" / "),
            fmt(&p.a),
            fmt(&p.b),
            100.0 * p.max_abs_difference
        );
    }
    text
}

/// Validates the run at `b` against run A, already loaded and sampled (`landscape_a`, at
/// `run_a`), with the same L; for [`validate`] and `report --half-set`.
pub(crate) fn against(
    run_a: &Path,
    landscape_a: &Landscape,
    run_b: &Path,
    l: usize,
    dev: tch::Device,
) -> Result<Validation> {
    let b = load(run_b, dev)?;
    let landscape_b = sample_run(&b, l)?;
    compare(
        landscape_a,
        &landscape_b,
        [&run_a.display().to_string(), &run_b.display().to_string()],
    )
}

/// The HTML section of a validation, writing its figures (`fsc_halves.png`,
/// `fsccc_halves.png`) into `out`.
pub(crate) fn section(v: &Validation, out: &Path) -> Result<Section> {
    // At most seven curves: the consensus and up to six matched points, ends included.
    let n = v.points.len();
    let shown: Vec<usize> = if n <= 6 {
        (0..n).collect()
    } else {
        let mut k: Vec<usize> = (0..6).map(|i| i * (n - 1) / 5).collect();
        k.dedup();
        k
    };
    let curve = |label: String, f: &HalfFsc| (label, curve_of(v, f));
    let mut curves = vec![curve("consensus".into(), &v.consensus)];
    for &i in &shown {
        let p = &v.points[i];
        let label = match p.component_b {
            Some(j) => format!("{} vs B's {j}", p.label),
            None if v.landscape == "continuous" => format!("{} vs B's {:.2}", p.label, p.alpha_b),
            None => p.label.clone(),
        };
        curves.push(curve(label, &p.fsc));
    }
    let refs: Vec<(String, &FscCurve)> = curves.iter().map(|(l, c)| (l.clone(), c)).collect();
    plot::fsc_plot(
        &out.join("fsc_halves.png"),
        "Half-set FSC (A vs aligned B)",
        &refs,
    )?;
    let row = |p: &MatchedPoint| {
        let matched = match p.component_b {
            Some(j) => format!("component {j}"),
            None => format!("α = {:.2}", p.alpha_b),
        };
        format!(
            "<tr><td>{}</td><td>{matched}</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>",
            p.label,
            fmt_opt(p.fsc.fsc.resolution_angstrom.half),
            gold_cell(&p.fsc),
            p.fsc.fsc.area
        )
    };
    let mut html = format!(
        "<p>{}</p><table><tr><th>A</th><th>B (matched)</th><th>FSC 0.5 (Å)</th><th>FSC 0.143 (Å)</th><th>AreaFSC</th></tr>\
         <tr><td>consensus</td><td>consensus</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>",
        escape(&summary(v)),
        fmt_opt(v.consensus.fsc.resolution_angstrom.half),
        gold_cell(&v.consensus),
        v.consensus.fsc.area
    );
    for p in &v.points {
        html += &row(p);
    }
    html += "</table>";
    html += &format!(
        "<p>B is aligned onto A by one rigid transform found on the consensus maps (Euler angles {:.1}°, {:.1}°, {:.1}°, {}, shift {:.1}, {:.1}, {:.1} Å; correlation {:.3} before, {:.3} after), then each of A's conformations is matched to B's most similar one by AreaFSC{}. A 0.143 crossing beyond Nyquist is shown as Nyquist.</p>{}",
        v.alignment.euler_deg.rot,
        v.alignment.euler_deg.tilt,
        v.alignment.euler_deg.psi,
        if v.alignment.flipped {
            "hand flipped"
        } else {
            "same hand"
        },
        v.alignment.shift_angstrom[0],
        v.alignment.shift_angstrom[1],
        v.alignment.shift_angstrom[2],
        v.alignment.correlation_before,
        v.alignment.correlation,
        if v.landscape == "mixture" {
            " (one component each: the permutation of highest total AreaFSC)"
        } else {
            ""
        },
        img_tag(&out.join("fsc_halves.png"), "half-set FSC curves")?
    );
    if let Some(f) = &v.fsccc {
        let (a, b) = (matrix(&f.a), matrix(&f.b));
        let (lo, hi) = a
            .iter()
            .chain(b.iter())
            .fold((0.0f64, 1.0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let axis = if v.landscape == "mixture" {
            "component"
        } else {
            "m (α = m/L)"
        };
        plot::heatmaps(
            &out.join("fsccc_halves.png"),
            &[("half A", &a), ("half B (in A's order)", &b)],
            (lo, hi),
            axis,
        )?;
        let p = &v.probabilities;
        let pct = |x: f64| format!("{:.1} %", 100.0 * x);
        let mut table = String::from("<table><tr><th></th>");
        for state in &p.states {
            table += &format!("<th>{}</th>", escape(state));
        }
        table += "</tr>";
        for (name, values) in [("A", &p.a), ("B", &p.b)] {
            table += &format!("<tr><td>{name}</td>");
            for &x in values {
                table += &format!("<td>{}</td>", pct(x));
            }
            table += "</tr>";
        }
        table += "</table>";
        html += &format!(
            "<h3>Do the halves' landscapes agree?</h3><p>FSCCC matrices (AreaFSC between every pair of one half's conformations): mean absolute difference {:.3}, largest {:.3}. Probabilities by {}: largest difference {:.1} points, total variation {:.3}.</p>{table}{}",
            f.mean_abs_difference,
            f.max_abs_difference,
            escape(&p.rule),
            100.0 * p.max_abs_difference,
            p.total_variation,
            img_tag(
                &out.join("fsccc_halves.png"),
                "FSCCC matrices of the halves"
            )?
        );
    }
    Ok(Section {
        title: "Half-set validation".into(),
        html,
    })
}

fn load(run: &Path, dev: tch::Device) -> Result<TrainedRun> {
    load_run(run, dev).with_context(|| format!("loading the run {}", run.display()))
}

/// The landscape's mean map: the mean along α, or the π-weighted mean of the components.
fn consensus(l: &Landscape) -> Result<Volume> {
    let first = &l.maps[0];
    let weights: Vec<f64> = if l.probabilities.len() == l.maps.len() {
        l.probabilities.clone()
    } else {
        vec![1.0 / l.maps.len() as f64; l.maps.len()]
    };
    let total: f64 = weights.iter().sum();
    let mut sum = Array3::<f32>::zeros(first.data().dim());
    for (v, w) in l.maps.iter().zip(&weights) {
        sum.scaled_add((w / total) as f32, v.data());
    }
    Ok(Volume::new(sum, first.apix())?)
}

/// For each row of `similarity`, the column of its largest value.
fn best_matches(similarity: &Array2<f64>) -> Vec<usize> {
    let columns: Vec<f64> = (0..similarity.ncols()).map(|j| j as f64).collect();
    mcg_eval::landscape::best_match(similarity, &columns)
        .into_iter()
        .map(|j| j as usize)
        .collect()
}

/// The permutation σ (row i ↦ column σ(i)) of a square `similarity` with the largest
/// Σ similarity[i, σ(i)]: every permutation up to 8 rows, greedily beyond (largest entries
/// first).
fn best_permutation(similarity: &Array2<f64>) -> Vec<usize> {
    let n = similarity.nrows();
    if n > 8 {
        let mut entries: Vec<(usize, usize)> =
            (0..n).flat_map(|i| (0..n).map(move |j| (i, j))).collect();
        entries.sort_by(|x, y| similarity[[y.0, y.1]].total_cmp(&similarity[[x.0, x.1]]));
        let mut sigma = vec![usize::MAX; n];
        let mut taken = vec![false; n];
        for (i, j) in entries {
            if sigma[i] == usize::MAX && !taken[j] {
                sigma[i] = j;
                taken[j] = true;
            }
        }
        return sigma;
    }
    fn search(
        s: &Array2<f64>,
        row: usize,
        current: &mut Vec<usize>,
        used: &mut Vec<bool>,
        best: &mut (f64, Vec<usize>),
    ) {
        let n = s.nrows();
        if row == n {
            let total: f64 = current.iter().enumerate().map(|(i, &j)| s[[i, j]]).sum();
            if total > best.0 {
                *best = (total, current.clone());
            }
            return;
        }
        for j in 0..n {
            if !used[j] {
                used[j] = true;
                current.push(j);
                search(s, row + 1, current, used, best);
                current.pop();
                used[j] = false;
            }
        }
    }
    let mut best = (f64::NEG_INFINITY, (0..n).collect());
    search(
        similarity,
        0,
        &mut Vec::with_capacity(n),
        &mut vec![false; n],
        &mut best,
    );
    best.1
}

fn half_fsc(c: &FscCurve) -> HalfFsc {
    let (angstrom, fraction) = c
        .resolution(0.143)
        .map_or((2.0 * c.apix, 1.0), |r| (r.angstrom, r.nyquist_fraction));
    HalfFsc {
        fsc: ResolutionRecord::of(c),
        gold_standard_angstrom: angstrom,
        gold_standard_nyquist_fraction: fraction,
        curve: c.fsc.clone(),
    }
}

/// A curve of the record, for the FSC plot.
fn curve_of(v: &Validation, f: &HalfFsc) -> FscCurve {
    let nyquist = 0.5 / v.pixel_size;
    FscCurve {
        binning: mcg_eval::Binning::Standard,
        box_size: v.box_size,
        apix: v.pixel_size,
        frequency_per_a: v
            .frequency_nyquist_fraction
            .iter()
            .map(|x| x * nyquist)
            .collect(),
        fsc: f.curve.clone(),
        voxels: Vec::new(),
    }
}

fn probability_record(
    rule: String,
    states: Vec<String>,
    a: Vec<f64>,
    b: Vec<f64>,
) -> HalfProbabilities {
    let diffs: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
    HalfProbabilities {
        rule,
        states,
        max_abs_difference: diffs.iter().fold(0.0, |m, &d| m.max(d)),
        total_variation: 0.5 * diffs.iter().sum::<f64>(),
        a,
        b,
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

fn matrix(rows: &[Vec<f64>]) -> Array2<f64> {
    let n = rows.len();
    Array2::from_shape_fn((n, n), |(i, j)| rows[i][j])
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("beyond Nyquist".into(), |x| format!("{x:.1}"))
}

fn gold_cell(f: &HalfFsc) -> String {
    if f.fsc.resolution_angstrom.gold.is_some() {
        format!("{:.1}", f.gold_standard_angstrom)
    } else {
        format!("≤ {:.1} (Nyquist)", f.gold_standard_angstrom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 16;
    const APIX: f32 = 5.0;

    /// Gaussian blobs (σ 1.2 voxels) of weight 1 at `centres` (voxels from the box centre).
    fn blobs(centres: &[[f64; 3]]) -> Volume {
        let c = (N / 2) as f64;
        let data = Array3::from_shape_fn((N, N, N), |(z, y, x)| {
            centres
                .iter()
                .map(|p| {
                    let d2 = (x as f64 - c - p[0]).powi(2)
                        + (y as f64 - c - p[1]).powi(2)
                        + (z as f64 - c - p[2]).powi(2);
                    (-d2 / (2.0 * 1.2f64.powi(2))).exp()
                })
                .sum::<f64>() as f32
        });
        Volume::new(data, APIX).unwrap()
    }

    /// An asymmetric molecule whose arm swings with α ∈ [0, 1].
    fn molecule(alpha: f64) -> Volume {
        blobs(&[
            [-3.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.0, 2.5, 1.0],
            [2.5, -1.0 + 3.0 * alpha, -1.5],
        ])
    }

    fn continuous(l: usize) -> Landscape {
        let alphas = fsccc_positions(l);
        Landscape {
            kind: Kind::Continuous,
            maps: alphas.iter().map(|&a| molecule(a)).collect(),
            alphas,
            probabilities: Vec::new(),
            cells: cell_midpoints(l).iter().map(|&a| molecule(a)).collect(),
        }
    }

    fn mixture(pi: [f64; 2], alphas: [f64; 2]) -> Landscape {
        Landscape {
            kind: Kind::Mixture,
            maps: alphas.iter().map(|&a| molecule(a)).collect(),
            alphas: vec![0.5 * pi[0], pi[0] + 0.5 * pi[1]],
            probabilities: pi.to_vec(),
            cells: Vec::new(),
        }
    }

    #[test]
    fn identical_landscapes_agree_at_every_shell_up_to_nyquist() {
        let a = continuous(4);
        let v = compare(&a, &a.clone(), ["A", "B"]).unwrap();
        assert!(!v.reversed);
        assert_eq!(v.alignment.correlation, v.alignment.correlation_before);
        assert!(!v.alignment.flipped);
        for p in &v.points {
            assert_eq!(p.alpha_a, p.alpha_b, "{}", p.label);
            assert!(
                p.fsc.curve.iter().all(|&c| c > 0.999_999),
                "{:?}",
                p.fsc.curve
            );
            assert_eq!(p.fsc.fsc.resolution_angstrom.gold, None);
            assert_eq!(p.fsc.gold_standard_nyquist_fraction, 1.0);
            assert_eq!(p.fsc.gold_standard_angstrom, 2.0 * f64::from(APIX));
        }
        assert_eq!(v.resolution.median_nyquist_fraction, 1.0);
        let f = v.fsccc.as_ref().unwrap();
        assert!(f.max_abs_difference < 1e-9, "{}", f.max_abs_difference);
        assert_eq!(v.probabilities.max_abs_difference, 0.0);
        assert_eq!(v.probabilities.total_variation, 0.0);
        assert!(
            summary(&v).contains("Nyquist (10.0 Å) or better"),
            "{}",
            summary(&v)
        );
    }

    #[test]
    fn a_rotated_and_mirrored_copy_is_aligned_back() {
        let a = continuous(4);
        // 90° about z and the other hand: an exact permutation of the voxels.
        let turn = Transform {
            rotation: [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
            flipped: true,
            shift_voxels: [1.0, 0.0, -1.0],
        };
        let mut b = a.clone();
        b.maps = a.maps.iter().map(|m| turn.apply(m)).collect();
        b.cells = a.cells.iter().map(|m| turn.apply(m)).collect();
        let v = compare(&a, &b, ["A", "B"]).unwrap();
        assert!(v.alignment.flipped, "{:?}", v.alignment);
        assert!(v.alignment.correlation_before < 0.7, "{:?}", v.alignment);
        assert!(v.alignment.correlation > 0.98, "{:?}", v.alignment);
        assert!(!v.reversed);
        for p in &v.points {
            assert_eq!(p.alpha_a, p.alpha_b, "{}", p.label);
            assert!(p.fsc.fsc.area > 0.9, "{}: {:?}", p.label, p.fsc);
            assert!(
                p.fsc.gold_standard_nyquist_fraction > 0.8,
                "{}: {:?}",
                p.label,
                p.fsc
            );
        }
        assert!(
            v.probabilities.max_abs_difference < 1e-12,
            "{:?}",
            v.probabilities
        );
    }

    #[test]
    fn a_reversed_latent_is_matched_end_to_end() {
        let a = continuous(4);
        let mut b = a.clone();
        b.maps.reverse();
        b.cells.reverse();
        let v = compare(&a, &b, ["A", "B"]).unwrap();
        assert!(v.reversed);
        for p in &v.points {
            assert!((p.alpha_b - (1.0 - p.alpha_a)).abs() < 1e-12, "{p:?}");
            assert!(p.fsc.curve.iter().all(|&c| c > 0.999_999), "{}", p.label);
        }
        // In A's order, B's FSCCC and probabilities are A's.
        assert!(v.fsccc.as_ref().unwrap().max_abs_difference < 1e-9);
        assert_eq!(v.probabilities.max_abs_difference, 0.0);
        assert!(summary(&v).contains("runs against A's"));
    }

    #[test]
    fn a_different_landscape_agrees_less() {
        let a = continuous(4);
        let b = Landscape {
            maps: a
                .alphas
                .iter()
                .map(|&x| blobs(&[[-2.0, 1.0, 0.0], [1.0, -2.0 + 2.0 * x, 1.5]]))
                .collect(),
            cells: cell_midpoints(4)
                .iter()
                .map(|&x| blobs(&[[-2.0, 1.0, 0.0], [1.0, -2.0 + 2.0 * x, 1.5]]))
                .collect(),
            ..a.clone()
        };
        let v = compare(&a, &b, ["A", "B"]).unwrap();
        assert!(v.resolution.mean_area_fsc < 0.9, "{:?}", v.resolution);
        assert!(
            v.resolution.median_nyquist_fraction < 1.0,
            "{:?}",
            v.resolution
        );
    }

    #[test]
    fn mixture_components_are_matched_by_a_permutation() {
        let a = mixture([0.3, 0.7], [0.0, 1.0]);
        let b = mixture([0.7, 0.3], [1.0, 0.0]);
        let v = compare(&a, &b, ["A", "B"]).unwrap();
        assert_eq!(v.permutation, Some(vec![1, 0]));
        assert_eq!(v.points[0].component_b, Some(1));
        assert_eq!(v.probabilities.a, vec![0.3, 0.7]);
        assert_eq!(v.probabilities.b, vec![0.3, 0.7]);
        assert_eq!(v.probabilities.max_abs_difference, 0.0);
        assert!(v.fsccc.as_ref().unwrap().max_abs_difference < 1e-9);
        for p in &v.points {
            assert!(p.fsc.curve.iter().all(|&c| c > 0.999_999), "{}", p.label);
        }
        // Other proportions show.
        let c = mixture([0.5, 0.5], [1.0, 0.0]);
        let v = compare(&a, &c, ["A", "C"]).unwrap();
        assert!((v.probabilities.max_abs_difference - 0.2).abs() < 1e-12);
        assert!((v.probabilities.total_variation - 0.2).abs() < 1e-12);
    }

    #[test]
    fn landscapes_of_other_kinds_or_boxes_are_refused_by_name() {
        let a = continuous(4);
        let m = mixture([0.5, 0.5], [0.0, 1.0]);
        let e = compare(&a, &m, ["runs/A", "runs/B"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("runs/B: a mixture landscape"), "{e}");
        let mut small = a.clone();
        let shrink = |v: &Volume| Volume::new(v.data().slice(s![..8, ..8, ..8]).to_owned(), APIX);
        small.maps = a.maps.iter().map(|v| shrink(v).unwrap()).collect();
        let e = compare(&a, &small, ["runs/A", "runs/B"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("runs/B: maps of 8³ voxels"), "{e}");
    }

    #[test]
    fn the_best_permutation_maximises_the_total() {
        let s = Array2::from_shape_vec((3, 3), vec![0.9, 0.8, 0.1, 0.85, 0.1, 0.2, 0.1, 0.3, 0.5])
            .unwrap();
        // Greedy would take (0, 0) first; the best total is 0.8 + 0.85 + 0.5.
        assert_eq!(best_permutation(&s), vec![1, 0, 2]);
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
    }
}
