//! A trained run judged the paper's way and shown at a glance ([`report`]): the FSC of the end
//! conformations against the truth, the FSCCC matrices, the discrete probabilities or the β(α)
//! curve, in one `report.html` (figures embedded, the result first, then the evidence), the
//! figures as PNG files and `metrics.json` ([`Metrics`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use base64::Engine;
use mcg_dataset::folder::GroundTruth;
use mcg_dataset::guard;
use mcg_dataset::monitor::{Bar, Monitor};
use mcg_eval::landscape::{
    Membership, best_match, cell_midpoints, discrete_probabilities, fsccc_positions,
    mean_abs_difference, midpoint_threshold, wasserstein1,
};
use mcg_eval::{AlignConfig, FscConfig, FscCurve, Transform, align, fsc, fsccc};
use mcg_physics::Volume;
use mcg_train::device::{self, DeviceChoice};
use mcg_train::models::Mode;
use mcg_train::run::{RunDir, load_run, volume_at};
use mcg_train::train::StepMetrics;
use ndarray::{Array2, Axis};

use crate::metrics::{
    AlignmentRecord, Continuous, EndFsc, Euler, Fractions, FscEnds, FscccRecord, HistoryPoint,
    Metrics, Probabilities, ResolutionRecord, Training, TrueFractions,
};
use crate::plot::{self, LinePlot, Series};

/// What to report on and where. [`ReportSettings::new`] gives the CLI's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSettings {
    /// The run folder of `multicryogan train`.
    pub run: PathBuf,
    /// The data set's folder from `multicryogan synth` (ground_truth/, landscape.json,
    /// particles.star): enables the comparisons with the truth.
    pub truth: Option<PathBuf>,
    /// Output folder (created if missing).
    pub out: PathBuf,
    /// L: the FSCCC matrix is (L + 1) × (L + 1) at α = m/L, and probabilities count L cells.
    pub l: usize,
    /// Checkpoint snapshots to measure against the truth over training time; 0: none.
    pub history: usize,
    /// Where G is sampled.
    pub device: DeviceChoice,
    /// The run of the other half set (`multicryogan train` on the other half of the
    /// particles): adds the gold-standard half-set validation ([`crate::validate`]) to the
    /// page and to `metrics.json` (`half_set`).
    pub half_set: Option<PathBuf>,
}

impl ReportSettings {
    /// A report on `run` into `out`, without a truth, L = 20, 8 snapshots, on the GPU when one
    /// is usable.
    pub fn new(run: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            run: run.into(),
            truth: None,
            out: out.into(),
            l: 20,
            history: 8,
            device: DeviceChoice::Auto,
            half_set: None,
        }
    }
}

/// One section of the HTML page.
pub(crate) struct Section {
    pub(crate) title: String,
    pub(crate) html: String,
}

/// The page's parts as the report makes them, assembled result first ([`Page::sections`]).
#[derive(Default)]
struct Page {
    /// The table of the ends' resolution.
    resolution: Option<String>,
    /// The probabilities, or β(α).
    landscape: Option<Section>,
    fsccc: Option<Section>,
    /// Slices and projections along the latent segment.
    montage: Option<Section>,
    /// The comparison with the other half set's run.
    half_set: Option<Section>,
    /// The evidence: FSC curves, training curves and images, quality over time.
    fsc_curves: Option<Section>,
    training: Option<Section>,
    history: Option<Section>,
}

impl Page {
    /// The answer first (each end's resolution, the probabilities or β(α), the FSCCC beside the
    /// truth's, the landscape in pictures), then the evidence.
    fn sections(self, m: &Metrics) -> Vec<Section> {
        let mut result = format!("<p>{}</p>", summary(m));
        if let Some(table) = self.resolution {
            result += &table;
        }
        let mut out = vec![Section {
            title: "Result".into(),
            html: result,
        }];
        out.extend(
            [
                self.landscape,
                self.fsccc,
                self.montage,
                self.half_set,
                self.fsc_curves,
                self.training,
                self.history,
            ]
            .into_iter()
            .flatten(),
        );
        out
    }
}

/// The result in a few sentences, from the numbers of `metrics.json`.
fn summary(m: &Metrics) -> String {
    let mut parts = Vec::new();
    let end = |name: &str, e: &crate::metrics::EndFsc| {
        let r = &e.fsc;
        format!(
            "the {name} end, against {}, reaches FSC 0.5 at {} Å ({} of Nyquist)",
            e.truth,
            fmt_opt(r.resolution_angstrom.half, 1),
            fmt_opt(r.resolution_nyquist_fraction.half, 2)
        )
    };
    match (&m.fsc_ends, &m.probabilities) {
        // Both ends when they are compared with two states (as the table shows them).
        (Some(ends), Some(_)) if ends.alpha_0.truth != ends.alpha_1.truth => parts.push(format!(
            "{}; {}.",
            end("α = 0", &ends.alpha_0),
            end("α = 1", &ends.alpha_1)
        )),
        (Some(ends), _) => parts.push(format!("{}.", end("α = 0", &ends.alpha_0))),
        (None, _) => parts.push(
            "No ground truth was given (--truth), so nothing is measured against one.".into(),
        ),
    }
    if let Some(c) = &m.continuous {
        parts.push(format!(
            "The recovered {p}(α) is below; the Wasserstein-1 distance of the recovered {p} \
             distribution from the particles' is {}.",
            if c.wasserstein1.is_finite() {
                format!("{:.2}", c.wasserstein1)
            } else {
                "not measured (no particles' values)".into()
            },
            p = c.parameter
        ));
    } else if let Some(p) = &m.probabilities {
        let pct = |x: f64| format!("{:.1} %", 100.0 * x);
        let truth = match (p.truth.alpha_0_state, p.truth.alpha_1_state) {
            (Some(a), Some(b)) => format!(" (truth: {} and {})", pct(a), pct(b)),
            _ => String::new(),
        };
        parts.push(format!(
            "Probabilities: {} {}, {} {}, {} in transition{truth}.",
            p.alpha_0_state,
            pct(p.alpha_0_fraction),
            p.alpha_1_state,
            pct(p.alpha_1_fraction),
            pct(p.transition)
        ));
    }
    if let Some(mad) = m.fsccc.as_ref().and_then(|f| f.mean_abs_difference) {
        parts.push(format!(
            "The FSCCC matrix differs from the truth's by {mad:.3} on average."
        ));
    }
    if let Some(v) = &m.half_set {
        parts.push(crate::validate::summary(v));
    }
    sentence_case(&parts.join(" "))
}

/// `text` with its first letter in upper case.
pub(crate) fn sentence_case(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map_or(String::new(), |c| c.to_uppercase().chain(chars).collect())
}

/// A running mean over `window` points, for noisy training curves.
fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, p) in points.iter().enumerate() {
        sum += p.1;
        if i >= w {
            sum -= points[i - w].1;
        }
        let k = (i + 1).min(w) as f64;
        out.push((p.0, sum / k));
    }
    out
}

pub(crate) fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("not reached".into(), |x| format!("{x:.digits$}"))
}

pub(crate) fn img_tag(path: &Path, alt: &str) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!(
        "<img alt=\"{alt}\" src=\"data:image/png;base64,{}\">",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// Central slice (z = N/2) and projection along z of a map.
fn slice_and_projection(v: &Volume) -> (Array2<f32>, Array2<f32>) {
    let n = v.box_size();
    let slice = v.data().index_axis(Axis(0), n / 2).to_owned();
    let projection = v.data().sum_axis(Axis(0));
    (slice, projection)
}

/// The files a report writes in its folder (the last two only with a half set).
pub const OUTPUTS: [&str; 12] = [
    "training_wasserstein.png",
    "training_losses.png",
    "images.png",
    "montage.png",
    "fsc_ends.png",
    "fsc_history.png",
    "beta_alpha.png",
    "fsccc.png",
    "metrics.json",
    "report.html",
    "fsc_halves.png",
    "fsccc_halves.png",
];

/// The files directly in `dir`.
pub(crate) fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// Refuses to write any of `outputs` in `out` over a file of the input folders `dirs`, then
/// creates `out`.
pub(crate) fn prepare_out<'a>(
    dirs: impl Iterator<Item = &'a PathBuf>,
    out: &Path,
    outputs: &[&str],
) -> Result<()> {
    let inputs: Vec<PathBuf> = dirs.flat_map(|dir| files_in(dir)).collect();
    guard::refuse_writing_over_inputs(&inputs, out, outputs, "the report's")?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

/// Writes the report `s` describes (see the module notes) and returns its numbers. Every input
/// is read and checked before anything is written.
///
/// A classification's folder (`multicryogan classify`: a `model.json` and no `config.json`) is
/// scored by [`crate::classification::report_classification`] instead.
pub fn report(s: &ReportSettings, progress: &dyn Monitor) -> Result<Metrics> {
    if crate::classification::is_classification(&s.run) {
        return crate::classification::report_classification(s, progress);
    }
    ensure!(s.l >= 2, "--l {}: expected at least 2", s.l);
    // Every input is read and checked before anything is written, so that a wrong --run or
    // --truth leaves no figure behind.
    let lines = mcg_train::run::read_metrics(&s.run)?;
    ensure!(
        !lines.is_empty(),
        "{}: no steps logged yet",
        RunDir::new(&s.run).metrics().display()
    );
    let dev = device::select(s.device)?;
    let trained =
        load_run(&s.run, dev).with_context(|| format!("loading the run {}", s.run.display()))?;
    let truth = match &s.truth {
        Some(dir) => Some(GroundTruth::load(dir, trained.apix)?),
        None => None,
    };
    if let Some(b) = &s.half_set {
        crate::validate::check_compatible(&s.run, b)?;
    }
    prepare_out(
        std::iter::once(&s.run).chain(&s.truth).chain(&s.half_set),
        &s.out,
        &OUTPUTS,
    )?;
    let out = &s.out;
    let mut page = Page::default();

    // Training curves.
    // A non-finite value (NaN, written as null) is left out of its curve.
    let curve = |value: fn(&StepMetrics) -> f64| -> Vec<(f64, f64)> {
        lines
            .iter()
            .map(|l| (l.step as f64, value(l)))
            .filter(|(_, v)| v.is_finite())
            .collect()
    };
    let window = (lines.len() / 50).max(1);
    plot::line_plot(
        &out.join("training_wasserstein.png"),
        &LinePlot {
            title: "Wasserstein estimate (E[D(real)] − E[D(fake)])",
            x_label: "generator step",
            y_label: "estimate",
            x_integer: true,
            ..Default::default()
        },
        &if window > 1 {
            vec![
                Series {
                    name: "per step".into(),
                    points: curve(|m| m.wasserstein),
                },
                Series {
                    name: format!("mean of {window} steps"),
                    points: smooth(&curve(|m| m.wasserstein), window),
                },
            ]
        } else {
            vec![Series {
                name: String::new(),
                points: curve(|m| m.wasserstein),
            }]
        },
    )?;
    plot::line_plot(
        &out.join("training_losses.png"),
        &LinePlot {
            title: format!("Losses (mean of {window} steps)").as_str(),
            x_label: "generator step",
            y_label: "loss",
            x_integer: true,
            ..Default::default()
        },
        &[
            Series {
                name: "D loss".into(),
                points: smooth(&curve(|m| m.d_loss), window),
            },
            Series {
                name: "G loss".into(),
                points: smooth(&curve(|m| m.g_loss), window),
            },
            Series {
                name: "gradient penalty".into(),
                points: smooth(&curve(|m| m.gradient_penalty), window),
            },
        ],
    )?;
    let last = lines.last().expect("checked");
    let training = Training {
        steps: last.step,
        seconds: last.time,
        final_wasserstein_mean: smooth(&curve(|m| m.wasserstein), window)
            .last()
            .map(|p| p.1),
        images_per_second: last.images_per_second,
    };
    let mut html = format!(
        "<p>{} generator steps in {:.1} minutes (this invocation's clock).</p>{}{}",
        last.step,
        if last.time.is_finite() {
            last.time
        } else {
            0.0
        } / 60.0,
        img_tag(
            &out.join("training_wasserstein.png"),
            "Wasserstein estimate"
        )?,
        img_tag(&out.join("training_losses.png"), "losses")?
    );
    if let Some(grid) = RunDir::new(&s.run).latest_image_grid() {
        // Through a temporary name, like every other output: never a half-copied figure.
        let bytes = std::fs::read(&grid).with_context(|| format!("reading {}", grid.display()))?;
        mcg_fsio::write_atomic(&out.join("images.png"), &bytes)?;
        html += &format!(
            "<h3>Real images (top) and simulated ones (bottom), {}</h3>{}",
            grid.file_stem().unwrap_or_default().to_string_lossy(),
            img_tag(&out.join("images.png"), "real and simulated images")?
        );
    }
    page.training = Some(Section {
        title: "Training".into(),
        html,
    });

    // The model and its landscape.
    let mode = trained.trainer.config.model.mode;
    let l = s.l;
    let positions = fsccc_positions(l);
    let cells = cell_midpoints(l);
    let history = snapshots(&s.run, s.history);
    let bar = progress.bar(
        (positions.len() + cells.len() + 4 + 2 * history.len()) as u64,
        "report",
    );
    let sample = |alpha: f64| -> Result<Volume> {
        bar.inc(1);
        Ok(volume_at(
            &trained.trainer,
            alpha as f32,
            trained.apix as f32,
        )?)
    };
    let recon: Vec<Volume> = positions
        .iter()
        .map(|&a| sample(a))
        .collect::<Result<_>>()?;
    let recon_cells: Vec<Volume> = if mode == Mode::Multi {
        cells.iter().map(|&a| sample(a)).collect::<Result<_>>()?
    } else {
        Vec::new()
    };

    // One alignment of the whole series onto the truth.
    let (transform, forward) = match &truth {
        Some(t) => orient(&recon[0], &recon[l], t, bar.as_ref())?,
        None => (Transform::identity(), true),
    };
    let aligned: Vec<Volume> = recon.iter().map(|v| transform.apply(v)).collect();
    let aligned_cells: Vec<Volume> = recon_cells.iter().map(|v| transform.apply(v)).collect();
    let mut metrics = Metrics {
        run: s.run.display().to_string(),
        training,
        alignment: AlignmentRecord {
            euler_deg: Euler::of(&transform),
            flipped: transform.flipped,
            shift_angstrom: transform.shift_angstrom(trained.apix),
            alpha_0_is_first_state: forward,
        },
        fsc_ends: None,
        fsc_history: None,
        fsccc: None,
        probabilities: None,
        continuous: None,
        half_set: None,
        classification: None,
    };

    // Montage of slices and projections.
    let picks: Vec<usize> = (0..=10).map(|k| (k * l + 5) / 10).collect();
    let shown: Vec<(Array2<f32>, Array2<f32>)> = picks
        .iter()
        .map(|&m| slice_and_projection(&aligned[m]))
        .collect();
    let mut rows = vec![
        (
            "central slice".to_string(),
            shown.iter().map(|s| s.0.view()).collect(),
        ),
        (
            "projection".to_string(),
            shown.iter().map(|s| s.1.view()).collect(),
        ),
    ];
    let truth_shown: Vec<(Array2<f32>, Array2<f32>)> = truth
        .as_ref()
        .map(|t| {
            picks
                .iter()
                .map(|&m| {
                    slice_and_projection(&t.states[truth_state_at(t, positions[m], forward)].1)
                })
                .collect()
        })
        .unwrap_or_default();
    if !truth_shown.is_empty() {
        rows.push((
            "truth: slice".into(),
            truth_shown.iter().map(|s| s.0.view()).collect(),
        ));
        rows.push((
            "truth: projection".into(),
            truth_shown.iter().map(|s| s.1.view()).collect(),
        ));
    }
    let labels: Vec<String> = picks
        .iter()
        .map(|&m| format!("α {:.2}", positions[m]))
        .collect();
    plot::image_grid(&out.join("montage.png"), &rows, &labels, 3)?;
    page.montage = Some(Section {
        title: "Along the latent segment".into(),
        html: format!(
            "<p>G's volumes at α from 0 to 1{}: the central slice and the projection along z{}.</p>{}",
            if truth.is_some() {
                ", aligned to the truth"
            } else {
                ""
            },
            if truth.is_some() {
                ", above the ground truth at the matching position"
            } else {
                ""
            },
            img_tag(&out.join("montage.png"), "slices and projections along α")?
        ),
    });

    let cfg = FscConfig::default();
    let area = |a: &Volume, b: &Volume| -> Result<f64> { Ok(fsc(a, b, &cfg)?.area()) };
    if let Some(t) = &truth {
        // FSC of the ends against their ground truth.
        let (t0, t1) = if forward {
            (0, t.states.len() - 1)
        } else {
            (t.states.len() - 1, 0)
        };
        let c0 = fsc(&aligned[0], &t.states[t0].1, &cfg)?;
        let c1 = fsc(&aligned[l], &t.states[t1].1, &cfg)?;
        let mut ends = vec![(format!("α = 0 vs {}", t.states[t0].0), &c0)];
        let single_state = t.states.len() == 1 || mode == Mode::Single;
        if !single_state {
            ends.push((format!("α = 1 vs {}", t.states[t1].0), &c1));
        }
        plot::fsc_plot(
            &out.join("fsc_ends.png"),
            "FSC against the ground truth",
            &ends,
        )?;
        metrics.fsc_ends = Some(FscEnds {
            alpha_0: EndFsc {
                truth: t.states[t0].0.clone(),
                fsc: ResolutionRecord::of(&c0),
            },
            alpha_1: EndFsc {
                truth: t.states[t1].0.clone(),
                fsc: ResolutionRecord::of(&c1),
            },
        });
        let row = |name: &str, c: &FscCurve| {
            format!(
                "<tr><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.3}</td></tr>",
                fmt_opt(c.resolution(0.5).map(|r| r.angstrom), 1),
                fmt_opt(c.resolution(0.5).map(|r| r.nyquist_fraction), 3),
                fmt_opt(c.resolution(0.143).map(|r| r.angstrom), 1),
                c.area()
            )
        };
        let mut table = String::from(
            "<table><tr><th>end</th><th>FSC 0.5 (Å)</th><th>FSC 0.5 (Nyquist)</th><th>FSC 0.143 (Å)</th><th>AreaFSC</th></tr>",
        );
        table += &row(&format!("α = 0 vs {}", t.states[t0].0), &c0);
        if !single_state {
            table += &row(&format!("α = 1 vs {}", t.states[t1].0), &c1);
        }
        table += "</table>";
        page.resolution = Some(table);
        page.fsc_curves = Some(Section {
            title: "FSC of the end conformations".into(),
            html: img_tag(&out.join("fsc_ends.png"), "FSC of the ends")?,
        });

        // Quality against training time.
        if !history.is_empty() {
            let times: Vec<(u64, f64)> = lines
                .iter()
                .filter(|l| l.time.is_finite())
                .map(|l| (l.step, l.time))
                .collect();
            let mut points = Vec::new();
            let mut table = Vec::new();
            for (step, dir) in &history {
                let v = mcg_formats::mrc::read_volume(&dir.join(RunDir::volume_name(0.0)), None)?;
                let a = align(&v, &t.states[t0].1, &AlignConfig::default())?;
                bar.inc(2);
                let c = fsc(&a.aligned, &t.states[t0].1, &cfg)?;
                let minutes = times
                    .iter()
                    .find(|(s, _)| s == step)
                    .map_or(f64::NAN, |(_, time)| time / 60.0);
                let r = c.resolution(0.5).map_or(1.0, |r| r.nyquist_fraction);
                points.push((minutes, r));
                table.push(HistoryPoint {
                    step: *step,
                    minutes,
                    fsc: ResolutionRecord::of(&c),
                });
            }
            plot::line_plot(
                &out.join("fsc_history.png"),
                &LinePlot {
                    title: format!("FSC 0.5 of α = 0 against {} over training", t.states[t0].0)
                        .as_str(),
                    x_label: "minutes of training",
                    y_label: "FSC 0.5 crossing / Nyquist",
                    y_range: Some((0.0, 1.0)),
                    ..Default::default()
                },
                &[Series {
                    name: String::new(),
                    points,
                }],
            )?;
            metrics.fsc_history = Some(table);
            page.history = Some(Section {
                title: "Quality against training time".into(),
                html: format!(
                    "<p>Each checkpoint's α = 0 volume aligned to {} on its own. The clock is that of the run's last invocation; steps of earlier invocations count from their own start.</p>{}",
                    t.states[t0].0,
                    img_tag(&out.join("fsc_history.png"), "FSC over time")?
                ),
            });
        }
    }

    if mode == Mode::Multi {
        // FSCCC of the reconstruction, and of the truth beside it.
        let m_recon = fsccc(&aligned, &cfg)?;
        let mut panels_truth = None;
        if let Some(t) = &truth {
            // The truth oriented like the reconstruction (for a discrete set, the ideal one).
            let series: Vec<Volume> = positions
                .iter()
                .map(|&a| t.states[truth_state_at(t, a, forward)].1.clone())
                .collect();
            let m_truth = fsccc(&series, &cfg)?;
            let mad = mean_abs_difference(&m_recon, &m_truth);
            metrics.fsccc = Some(FscccRecord {
                l,
                reconstruction: rows_of(&m_recon),
                truth: Some(rows_of(&m_truth)),
                mean_abs_difference: Some(mad),
                truth_kind: Some(
                    if t.discrete {
                        "ideal discrete"
                    } else {
                        "ground-truth series"
                    }
                    .into(),
                ),
            });
            panels_truth = Some((m_truth, mad));
        } else {
            metrics.fsccc = Some(FscccRecord {
                l,
                reconstruction: rows_of(&m_recon),
                truth: None,
                mean_abs_difference: None,
                truth_kind: None,
            });
        }
        let (lo, hi) = range_of(
            m_recon
                .iter()
                .chain(panels_truth.iter().flat_map(|(m, _)| m.iter())),
        );
        let range = (lo.min(0.0), hi.max(1.0));
        let mut panels = Vec::new();
        if let Some((m, _)) = &panels_truth {
            panels.push((
                if truth.as_ref().is_some_and(|t| t.discrete) {
                    "ideal (truth)"
                } else {
                    "ground truth"
                },
                m,
            ));
        }
        panels.push(("reconstruction", &m_recon));
        plot::heatmaps(&out.join("fsccc.png"), &panels, range, "m (α = m/L)")?;
        page.fsccc = Some(Section {
            title: "FSCCC matrices".into(),
            html: format!(
                "<p>M[m, n] = AreaFSC(x<sub>m</sub>, x<sub>n</sub>), α = m/{l}.{}</p>{}",
                panels_truth
                    .as_ref()
                    .map_or(String::new(), |(_, mad)| format!(
                        " Mean absolute difference from the truth: {mad:.3}."
                    )),
                img_tag(&out.join("fsccc.png"), "FSCCC matrices")?
            ),
        });

        // Discrete probabilities, or β(α).
        let (ends_area, to_first, to_second) =
            paper_rule(&aligned[0], &aligned[l], &aligned_cells, &cfg)?;
        let threshold = midpoint_threshold(ends_area);
        let p = discrete_probabilities(&to_first, &to_second, threshold);
        let p_paper = discrete_probabilities(&to_first, &to_second, 0.5);
        let (name0, name1) = match &truth {
            Some(t) if forward => (
                t.states[0].0.clone(),
                t.states[t.states.len() - 1].0.clone(),
            ),
            Some(t) => (
                t.states[t.states.len() - 1].0.clone(),
                t.states[0].0.clone(),
            ),
            None => ("the α = 0 end".into(), "the α = 1 end".into()),
        };
        let truth_p = truth.as_ref().and_then(GroundTruth::first_fraction);
        let (true0, true1) = match truth_p {
            Some(p0) if forward => (Some(p0), Some(1.0 - p0)),
            Some(p0) => (Some(1.0 - p0), Some(p0)),
            None => (None, None),
        };
        metrics.probabilities = Some(Probabilities {
            cells: l,
            ends_area_fsc: ends_area,
            threshold,
            alpha_0_state: name0.clone(),
            alpha_1_state: name1.clone(),
            alpha_0_fraction: p.first,
            alpha_1_fraction: p.second,
            transition: p.transition,
            truth: TrueFractions {
                alpha_0_state: true0,
                alpha_1_state: true1,
            },
            paper_threshold_0_5: Fractions {
                alpha_0_fraction: p_paper.first,
                alpha_1_fraction: p_paper.second,
                transition: p_paper.transition,
            },
            membership: p.membership.clone(),
        });
        let pct = |x: Option<f64>| x.map_or("–".into(), |v| format!("{:.1} %", 100.0 * v));
        let mut html = format!(
            "<p>Each of {l} equal cells of the latent segment (α at their midpoints) belongs to the end it resembles: AreaFSC with that end above {threshold:.3} (halfway between 1 and the ends' own AreaFSC, {ends_area:.3}) and with the other below. The paper's fixed 0.5 is shown too.</p>\
             <table><tr><th></th><th>{name0} (α = 0 end)</th><th>{name1} (α = 1 end)</th><th>transition</th></tr>\
             <tr><td>recovered</td><td>{}</td><td>{}</td><td>{}</td></tr>\
             <tr><td>recovered, paper's 0.5</td><td>{}</td><td>{}</td><td>{}</td></tr>\
             <tr><td>truth</td><td>{}</td><td>{}</td><td>{}</td></tr></table>\
             <p>Cells: {}</p>",
            pct(Some(p.first)),
            pct(Some(p.second)),
            pct(Some(p.transition)),
            pct(Some(p_paper.first)),
            pct(Some(p_paper.second)),
            pct(Some(p_paper.transition)),
            pct(true0),
            pct(true1),
            if truth.as_ref().is_some_and(|t| t.discrete) {
                "0.0 %"
            } else {
                "–"
            },
            p.membership
                .iter()
                .map(|m| match m {
                    Membership::First => "0",
                    Membership::Second => "1",
                    Membership::Transition => "·",
                })
                .collect::<String>(),
        );
        if let Some(t) = truth.as_ref().filter(|t| !t.discrete && t.states.len() > 1) {
            // β(α): the truth state of highest AreaFSC at each position.
            let sim = |maps: &[Volume]| -> Result<Array2<f64>> {
                let mut s = Array2::zeros((maps.len(), t.states.len()));
                for (i, v) in maps.iter().enumerate() {
                    for (k, (_, tv)) in t.states.iter().enumerate() {
                        s[[i, k]] = area(v, tv)?;
                    }
                }
                Ok(s)
            };
            let beta = best_match(&sim(&aligned)?, &t.values);
            let beta_cells = best_match(&sim(&aligned_cells)?, &t.values);
            let (lo, hi) = (t.values[0], t.values[t.values.len() - 1]);
            let ideal: Vec<(f64, f64)> = positions
                .iter()
                .map(|&a| {
                    (
                        a,
                        if forward {
                            lo + a * (hi - lo)
                        } else {
                            hi - a * (hi - lo)
                        },
                    )
                })
                .collect();
            plot::line_plot(
                &out.join("beta_alpha.png"),
                &LinePlot {
                    title: format!("Recovered {}(α)", t.parameter).as_str(),
                    x_label: "α",
                    y_label: &t.parameter,
                    x_range: Some((0.0, 1.0)),
                    y_range: Some((lo - 1.0, hi + 1.0)),
                    ..Default::default()
                },
                &[
                    Series {
                        name: "recovered (best AreaFSC)".into(),
                        points: positions
                            .iter()
                            .copied()
                            .zip(beta.iter().copied())
                            .collect(),
                    },
                    Series {
                        name: "uniform landscape".into(),
                        points: ideal,
                    },
                ],
            )?;
            let w1 = wasserstein1(&beta_cells, &t.particle_values);
            metrics.continuous = Some(Continuous {
                parameter: t.parameter.clone(),
                alpha: positions.clone(),
                recovered: beta.clone(),
                recovered_on_cells: beta_cells.clone(),
                wasserstein1: w1,
            });
            html += &format!(
                "<p>Each reconstructed volume is matched to the ground-truth {} of highest AreaFSC. Wasserstein-1 distance between the recovered distribution (cell midpoints, α uniform) and the particles' true values: {}.</p>{}",
                t.parameter,
                if w1.is_finite() {
                    format!("{w1:.2}")
                } else {
                    "not available (no particles.star)".into()
                },
                img_tag(&out.join("beta_alpha.png"), "beta of alpha")?
            );
        }
        page.landscape = Some(Section {
            title: if truth
                .as_ref()
                .is_some_and(|t| !t.discrete && t.states.len() > 1)
            {
                "Landscape".into()
            } else {
                "Discrete probabilities".into()
            },
            html,
        });
    }
    bar.finish();

    if let Some(b) = &s.half_set {
        // The other half's run, compared with this one's landscape in this run's own frame.
        let landscape = crate::validate::sample_run(&trained, l)?;
        let v = crate::validate::against(&s.run, &landscape, b, l, dev)?;
        page.half_set = Some(crate::validate::section(&v, out)?);
        metrics.half_set = Some(v);
    }

    let sections = page.sections(&metrics);
    write_metrics_and_page(
        out,
        &s.run,
        "multicryogan report",
        "Run",
        &metrics,
        &sections,
    )?;
    Ok(metrics)
}

/// Writes `metrics.json` and `report.html` into `out`: the page headed `heading`, naming the
/// input as `what: run`, then the sections.
pub(crate) fn write_metrics_and_page(
    out: &Path,
    run: &Path,
    heading: &str,
    what: &str,
    metrics: &Metrics,
    sections: &[Section],
) -> Result<()> {
    guard::write_json_atomic(&out.join("metrics.json"), metrics)?;
    let run = escape(&run.display().to_string());
    write_html(
        &out.join("report.html"),
        &format!("multicryogan report: {run}"),
        heading,
        &format!("{what}: <code>{run}</code>. Numbers: <code>metrics.json</code>."),
        sections,
    )
}

/// The paper's rule's inputs: the AreaFSC of the two ends, and of each cell's map with the
/// first end and with the last (`M[0, L]`, `M[0, n]`, `M[L, n]`).
pub(crate) fn paper_rule(
    first: &Volume,
    last: &Volume,
    cells: &[Volume],
    cfg: &FscConfig,
) -> Result<(f64, Vec<f64>, Vec<f64>)> {
    let area = |a: &Volume, b: &Volume| -> Result<f64> { Ok(fsc(a, b, cfg)?.area()) };
    let to = |end: &Volume| -> Result<Vec<f64>> { cells.iter().map(|v| area(end, v)).collect() };
    Ok((area(first, last)?, to(first)?, to(last)?))
}

/// Which truth state sits at latent position `alpha` of a reconstruction oriented `forward`:
/// for a discrete set the ideal reconstruction's (the first state on the fraction of the segment
/// the particles give it, the last state elsewhere), for a continuous one the state nearest to
/// the uniform landscape's value.
fn truth_state_at(t: &GroundTruth, alpha: f64, forward: bool) -> usize {
    if t.discrete {
        let p = t.first_fraction().unwrap_or(0.5);
        let first_part = if forward { alpha < p } else { alpha > 1.0 - p };
        return if first_part { 0 } else { t.states.len() - 1 };
    }
    let (lo, hi) = (t.values[0], t.values[t.values.len() - 1]);
    let v = if forward {
        lo + alpha * (hi - lo)
    } else {
        hi - alpha * (hi - lo)
    };
    t.nearest(v)
}

/// The transform that aligns the reconstruction to the truth, and whether its α = 0 end is the
/// truth's first state: both ends are aligned to both end states, and the pairing with the
/// higher summed correlation wins; its better alignment gives the one transform.
fn orient(
    end0: &Volume,
    end1: &Volume,
    t: &GroundTruth,
    bar: &dyn Bar,
) -> Result<(Transform, bool)> {
    let cfg = AlignConfig::default();
    let a00 = align(end0, t.first(), &cfg)?;
    bar.inc(1);
    if t.states.len() == 1 {
        bar.inc(3);
        return Ok((a00.transform, true));
    }
    let a11 = align(end1, t.last(), &cfg)?;
    let a01 = align(end0, t.last(), &cfg)?;
    let a10 = align(end1, t.first(), &cfg)?;
    bar.inc(3);
    let forward = a00.score + a11.score >= a01.score + a10.score;
    let best = if forward {
        if a00.score >= a11.score { a00 } else { a11 }
    } else if a01.score >= a10.score {
        a01
    } else {
        a10
    };
    Ok((best.transform, forward))
}

fn range_of<'a>(values: impl Iterator<Item = &'a f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
        (a.min(v), b.max(v))
    })
}

pub(crate) fn rows_of(m: &Array2<f64>) -> Vec<Vec<f64>> {
    m.rows().into_iter().map(|r| r.to_vec()).collect()
}

/// Up to `count` checkpoint snapshot folders (`volumes/step_N`), evenly chosen, oldest first.
fn snapshots(run: &Path, count: usize) -> Vec<(u64, PathBuf)> {
    let all = RunDir::new(run).snapshots();
    if count == 0 || all.is_empty() {
        return Vec::new();
    }
    if all.len() <= count {
        return all;
    }
    let last = all.len() - 1;
    let mut picked: Vec<usize> = (0..count).map(|k| k * last / (count - 1).max(1)).collect();
    picked.dedup();
    picked.into_iter().map(|i| all[i].clone()).collect()
}

/// `s` with `&`, `<` and `>` escaped for HTML.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An HTML page: `title` (escaped text) in the browser's title bar, `heading` on the page,
/// `intro` (HTML) under it, then the sections.
pub(crate) fn write_html(
    path: &Path,
    title: &str,
    heading: &str,
    intro: &str,
    sections: &[Section],
) -> Result<()> {
    let mut page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
         img{{max-width:100%;display:block;margin:0.5em 0}}table{{border-collapse:collapse;margin:0.5em 0}}\
         td,th{{border:1px solid #bbb;padding:0.25em 0.6em;text-align:right}}h2{{border-bottom:1px solid #ddd}}</style>\n\
         </head><body><h1>{heading}</h1><p>{intro}</p>\n"
    );
    for s in sections {
        page += &format!("<h2>{}</h2>\n{}\n", escape(&s.title), s.html);
    }
    page += "</body></html>\n";
    Ok(mcg_fsio::write_atomic(path, page.as_bytes())?)
}

#[cfg(test)]
pub(crate) mod tests {
    /// Fails unless `source` writes at least `least` files (by `out.join` of a name) and every one is
    /// in `outputs`, the list the overwrite check is given.
    pub(crate) fn assert_outputs_listed(source: &str, outputs: &[&str], least: usize) {
        let written: Vec<&str> = source
            .split("out.join(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(written.len() >= least, "{written:?}");
        for name in written {
            assert!(
                outputs.contains(&name),
                "{name} is written but not in OUTPUTS"
            );
        }
    }

    /// Every file the report writes is in OUTPUTS, which the overwrite check is given.
    #[test]
    fn every_output_is_listed() {
        assert_outputs_listed(include_str!("report.rs"), &super::OUTPUTS, 10);
    }

    use super::*;

    #[test]
    fn smoothing_is_a_running_mean() {
        let p: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, i as f64)).collect();
        let s = smooth(&p, 2);
        assert_eq!(
            s.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![0.0, 0.5, 1.5, 2.5, 3.5]
        );
    }
}
