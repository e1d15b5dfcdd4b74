//! A classification (`multicryogan classify`: `class_001.mrc …`, `model.json`,
//! `particles.star`) judged against a data set's truth, the way [`crate::report()`] judges a GAN
//! run: each class map aligned onto each of the truth's states on its own (a class may settle
//! in a pseudo-symmetric mate of the others' frame), the classes matched to the states by the assignment of highest total AreaFSC, each
//! matched class's FSC against its state, π against the states' true shares, the particles'
//! accuracy under the same matching, and the EM history, into `metrics.json` (its
//! `classification` section, [`Classification`]), PNG figures and `report.html`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use mcg_classify::run::{MODEL_JSON, Model, PARTICLES_STAR, map_name, read_model};
use mcg_dataset::folder::{DataSetDir, GroundTruth};
use mcg_dataset::monitor::Monitor;
use mcg_eval::landscape::best_assignment;
use mcg_eval::{AlignConfig, FscConfig, FscCurve, Transform, align, fsc};
use mcg_formats::ParticleSet;
use mcg_formats::star::{self, StarOptions};
use mcg_physics::Volume;
use mcg_runfiles::RunDir;
use ndarray::Array2;

use crate::ReportSettings;
use crate::metrics::{
    AlignmentRecord, ClassIteration, ClassScore, Classification, Euler, Metrics, ResolutionRecord,
    StateProportion, Training,
};
use crate::plot::{self, Level, LinePlot, Series};
use crate::report::{
    Section, escape, fmt_opt, img_tag, prepare_out, sentence_case, write_metrics_and_page,
};

/// The files a classification's report writes in its folder (the FSC figure only with a
/// truth).
pub const OUTPUTS: [&str; 5] = [
    "fsc_classes.png",
    "classification_likelihood.png",
    "classification_pi.png",
    "metrics.json",
    "report.html",
];

/// Whether `run` is a classification: our folder (it holds `model.json` and no GAN
/// `config.json`) or RELION's `…_model.star`.
pub fn is_classification(run: &Path) -> bool {
    (run.join(MODEL_JSON).is_file() && !RunDir::new(run).config().is_file())
        || crate::relion::is_model_star(run)
}

/// A classification's files: `model.json`'s numbers, where they come from, the class maps,
/// the particles with their classes, and the folder that holds them (never written over).
struct ClassRun {
    model: Model,
    source: PathBuf,
    maps: Vec<PathBuf>,
    particles: PathBuf,
    folder: PathBuf,
}

fn read_run(run: &Path) -> Result<ClassRun> {
    if crate::relion::is_model_star(run) {
        let r = crate::relion::read_run(run)?;
        return Ok(ClassRun {
            model: r.model,
            source: run.to_path_buf(),
            maps: r.maps,
            particles: r.particles,
            folder: run.parent().unwrap_or(Path::new(".")).to_path_buf(),
        });
    }
    let model = read_model(run)?;
    Ok(ClassRun {
        maps: (0..model.classes).map(|k| run.join(map_name(k))).collect(),
        model,
        source: run.join(MODEL_JSON),
        particles: run.join(PARTICLES_STAR),
        folder: run.to_path_buf(),
    })
}

/// The truth's side of the comparison.
struct Truth {
    ground: GroundTruth,
    /// Each particle's true state (0-based), when the truth's particles.star records
    /// `_rlnClassNumber` for every particle.
    classes: Option<Vec<usize>>,
    /// Each state's share of the particles, when known.
    fractions: Option<Vec<f64>>,
}

/// Scores the classification in `s.run` (see the module notes) against `s.truth` when given,
/// writes `metrics.json`, the figures and `report.html` into `s.out`, and returns the numbers.
/// Every input is read and checked before anything is written; an output never replaces an
/// input.
pub fn report_classification(s: &ReportSettings, progress: &dyn Monitor) -> Result<Metrics> {
    let ClassRun {
        model,
        source: model_path,
        maps: map_paths,
        particles: particles_path,
        folder,
    } = read_run(&s.run)?;
    let k_count = model.classes;
    ensure!(
        k_count >= 1,
        "{}: field classes is 0, expected at least 1",
        model_path.display()
    );
    ensure!(
        model.pi.len() == k_count,
        "{}: field pi has {} values, expected one per class ({k_count})",
        model_path.display(),
        model.pi.len()
    );
    ensure!(
        !model.history.is_empty(),
        "{}: field history is empty, expected at least the start",
        model_path.display()
    );
    ensure!(
        map_paths.len() == k_count,
        "{}: {} class maps, expected one per class ({k_count})",
        model_path.display(),
        map_paths.len()
    );
    let maps = map_paths
        .iter()
        .enumerate()
        .map(|(k, path)| read_class_map(path, k, &model))
        .collect::<Result<Vec<Volume>>>()?;
    let classified = star::read_particles(&particles_path, &StarOptions::default())
        .with_context(|| format!("reading the classification's {}", particles_path.display()))?;
    let assigned = class_of_particles(&classified, &particles_path, k_count)?;
    let truth = match &s.truth {
        Some(dir) => Some(load_truth(dir, &model, &classified, &particles_path)?),
        None => None,
    };
    prepare_out(std::iter::once(&folder).chain(&s.truth), &s.out, &OUTPUTS)?;
    let out = &s.out;
    let states = truth.as_ref().map_or(0, |t| t.ground.states.len());
    let bar = progress.bar((k_count * states + k_count) as u64, "report");

    // Each class aligned on its own to every state: EM reconstructs every class from its own
    // images, so a class can settle in a pseudo-symmetric mate of the others' frame (Hsp90's
    // near 2-fold puts the closed class's moving part on the other side), and one transform
    // for all classes would score that class against the wrong arrangement. Maps already in
    // the truth's frame stay as they are (an interpolated copy would lose its finest detail).
    let cfg = FscConfig::default();
    let mut area = Array2::zeros((k_count, states));
    let mut placed: Vec<Vec<(Volume, Transform)>> = Vec::with_capacity(k_count);
    if let Some(t) = &truth {
        for (k, map) in maps.iter().enumerate() {
            let mut row = Vec::with_capacity(states);
            for (j, (_, state)) in t.ground.states.iter().enumerate() {
                progress.check_cancelled()?;
                let a = align(map, state, &AlignConfig::default())?;
                bar.inc(1);
                let (moved, transform) = if a.score > a.score_before {
                    (a.aligned, a.transform)
                } else {
                    (map.clone(), Transform::identity())
                };
                area[[k, j]] = fsc(&moved, state, &cfg)?.area();
                row.push((moved, transform));
            }
            placed.push(row);
        }
    }
    let matching: Vec<Option<usize>> = if truth.is_some() {
        best_assignment(&area)
    } else {
        vec![None; k_count]
    };
    let mut curves: Vec<Option<FscCurve>> = Vec::with_capacity(k_count);
    for k in 0..k_count {
        curves.push(match (&truth, matching[k]) {
            (Some(t), Some(j)) => Some(fsc(&placed[k][j].0, &t.ground.states[j].1, &cfg)?),
            _ => None,
        });
        bar.inc(1);
    }
    // The record's transform: class 1's, onto the state it is matched to.
    let transform = match matching.first().copied().flatten() {
        Some(j) => placed[0][j].1,
        None => Transform::identity(),
    };
    bar.finish();

    let last = model.history.last().expect("checked");
    let state_name = |j: usize| -> String {
        truth
            .as_ref()
            .map_or(String::new(), |t| t.ground.states[j].0.clone())
    };
    let per_class: Vec<ClassScore> = (0..k_count)
        .map(|k| ClassScore {
            class: k + 1,
            map: model.maps.get(k).cloned().unwrap_or_else(|| map_name(k)),
            state: matching[k].map(state_name),
            pi: model.pi[k],
            fsc: curves[k].as_ref().map(ResolutionRecord::of),
            half_set_resolution_angstrom: last.resolution_a.get(k).copied().unwrap_or(f64::NAN),
            half_set_resolution_nyquist: last
                .resolution_nyquist
                .get(k)
                .copied()
                .unwrap_or(f64::NAN),
        })
        .collect();
    let proportions: Vec<StateProportion> = (0..states)
        .map(|j| {
            let class = matching.iter().position(|&m| m == Some(j));
            StateProportion {
                state: state_name(j),
                true_fraction: truth
                    .as_ref()
                    .and_then(|t| t.fractions.as_ref())
                    .map(|f| f[j]),
                class: class.map(|k| k + 1),
                pi: class.map_or(0.0, |k| model.pi[k]),
            }
        })
        .collect();
    let pi_max_difference_points = proportions
        .iter()
        .map(|p| p.true_fraction.map(|f| 100.0 * (p.pi - f).abs()))
        .collect::<Option<Vec<f64>>>()
        .filter(|d| !d.is_empty())
        .map(|d| d.into_iter().fold(0.0, f64::max));
    let accuracy = truth
        .as_ref()
        .and_then(|t| t.classes.as_ref())
        .map(|true_states| accuracy_under(&assigned, true_states, &matching));
    let classification = Classification {
        classes: k_count,
        states: (0..states).map(state_name).collect(),
        area_fsc: crate::report::rows_of(&area),
        per_class,
        proportions,
        pi_max_difference_points,
        accuracy,
        particles: assigned.len(),
        history: model
            .history
            .iter()
            .map(|h| ClassIteration {
                iteration: h.iteration,
                log_likelihood: h.log_likelihood,
                changed: h.changed,
                pi: h.pi.clone(),
            })
            .collect(),
    };

    // Figures.
    let mut evidence = Vec::new();
    if truth.is_some() {
        let named: Vec<(String, &FscCurve)> = curves
            .iter()
            .zip(&classification.per_class)
            .filter_map(|(c, score)| {
                let state = score.state.as_ref()?;
                Some((format!("class {} vs {state}", score.class), c.as_ref()?))
            })
            .collect();
        plot::fsc_plot(
            &out.join("fsc_classes.png"),
            "FSC of each class against its state",
            &named,
        )?;
        evidence.push(Section {
            title: "FSC of the classes".into(),
            html: format!(
                "<p>Each class map, aligned on its own to the state it is matched to, against that state.</p>{}",
                img_tag(&out.join("fsc_classes.png"), "FSC of each class")?
            ),
        });
    }
    let iterations = &classification.history;
    plot::line_plot(
        &out.join("classification_likelihood.png"),
        &LinePlot {
            title: "Mean log-likelihood per image",
            x_label: "iteration",
            y_label: "log-likelihood (nats)",
            x_integer: true,
            ..Default::default()
        },
        &[Series {
            name: String::new(),
            points: iterations
                .iter()
                .map(|h| (h.iteration as f64, h.log_likelihood))
                .filter(|p| p.1.is_finite())
                .collect(),
        }],
    )?;
    let mut series: Vec<Series> = (0..k_count)
        .map(|k| Series {
            name: format!("π of class {}", k + 1),
            points: iterations
                .iter()
                .filter_map(|h| Some((h.iteration as f64, *h.pi.get(k)?)))
                .collect(),
        })
        .collect();
    series.push(Series {
        name: "share of particles that changed class".into(),
        points: iterations
            .iter()
            .map(|h| (h.iteration as f64, h.changed))
            .collect(),
    });
    let levels = classification
        .proportions
        .iter()
        .filter_map(|p| {
            Some(Level {
                y: p.true_fraction?,
                label: format!("truth: {}", p.state),
            })
        })
        .collect();
    plot::line_plot(
        &out.join("classification_pi.png"),
        &LinePlot {
            title: "Class probabilities π and changed share per iteration",
            x_label: "iteration",
            y_label: "fraction",
            y_range: Some((0.0, 1.0)),
            levels,
            x_integer: true,
            ..Default::default()
        },
        &series,
    )?;
    evidence.push(Section {
        title: "EM iterations".into(),
        html: format!(
            "{}{}",
            img_tag(
                &out.join("classification_likelihood.png"),
                "log-likelihood per iteration"
            )?,
            img_tag(&out.join("classification_pi.png"), "π per iteration")?
        ),
    });

    let metrics = Metrics {
        run: s.run.display().to_string(),
        training: Training {
            steps: last.iteration as u64,
            seconds: model.history.iter().map(|h| h.seconds).sum(),
            final_wasserstein_mean: None,
            images_per_second: f64::NAN,
        },
        alignment: AlignmentRecord {
            euler_deg: Euler::of(&transform),
            flipped: transform.flipped,
            shift_angstrom: transform.shift_angstrom(model.apix),
            alpha_0_is_first_state: matching[0] == Some(0),
        },
        fsc_ends: None,
        fsc_history: None,
        fsccc: None,
        probabilities: None,
        continuous: None,
        half_set: None,
        classification: Some(classification),
    };
    let c = metrics.classification.as_ref().expect("set above");
    let mut sections = vec![Section {
        title: "Result".into(),
        html: format!("<p>{}</p>{}", summary(c), table(c)),
    }];
    sections.extend(evidence);
    write_metrics_and_page(
        out,
        &s.run,
        "multicryogan report: classification",
        "Classification",
        &metrics,
        &sections,
    )?;
    Ok(metrics)
}

/// Class `k`'s map (at `path`), of the box and voxel size `model.json` records.
fn read_class_map(path: &Path, k: usize, model: &Model) -> Result<Volume> {
    let v = mcg_formats::mrc::read_volume(path, None)
        .with_context(|| format!("reading class {} of the classification", k + 1))?;
    ensure!(
        v.box_size() == model.box_size
            && (f64::from(v.apix()) - model.apix).abs() < 1e-3 * model.apix,
        "{}: {}³ voxels of {} Å, expected model.json's box_size {} and apix {}",
        path.display(),
        v.box_size(),
        v.apix(),
        model.box_size,
        model.apix
    );
    Ok(v)
}

/// Each particle's class (0-based) from the classification's `particles.star` (`set`, read
/// from `path`).
fn class_of_particles(set: &ParticleSet, path: &Path, classes: usize) -> Result<Vec<usize>> {
    set.particles
        .iter()
        .enumerate()
        .map(|(i, p)| match p.class {
            Some(c) if c >= 1 && c as usize <= classes => Ok(c as usize - 1),
            other => bail!(
                "{}: particle {}: _rlnClassNumber {}, expected a class from 1 to {classes}",
                path.display(),
                i + 1,
                other.map_or("missing".into(), |c| c.to_string())
            ),
        })
        .collect()
}

/// The truth folder's states, and its particles' true states and shares when its
/// particles.star records them (the same particles, in the same order, as the classification's).
fn load_truth(
    dir: &Path,
    model: &Model,
    classified: &ParticleSet,
    particles: &Path,
) -> Result<Truth> {
    let mut ground = GroundTruth::load(dir, model.apix)?;
    if ground.discrete {
        // A discrete landscape's maps run along its path; its states are the values the
        // particles take (class c is the c-th in order), or its two ends when none is recorded.
        let mut kept: Vec<usize> = ground
            .particle_values
            .iter()
            .map(|&v| ground.nearest(v))
            .collect();
        kept.sort_unstable();
        kept.dedup();
        if kept.is_empty() {
            kept = vec![0, ground.states.len() - 1];
            kept.dedup();
        }
        ground.states = kept.iter().map(|&j| ground.states[j].clone()).collect();
        ground.values = kept.iter().map(|&j| ground.values[j]).collect();
    }
    let n_states = ground.states.len();
    let box_size = ground.first().box_size();
    ensure!(
        box_size == model.box_size,
        "{}: ground-truth maps of {box_size}³ voxels, but the classification's ({}) are {}³",
        dir.display(),
        particles.parent().unwrap_or(particles).display(),
        model.box_size
    );
    let star_path = DataSetDir::new(dir).star();
    let mut classes = None;
    if star_path.is_file() {
        let set = star::read_particles(&star_path, &StarOptions::default())
            .with_context(|| format!("reading the truth's {}", star_path.display()))?;
        check_same_particles(&set, &star_path, classified, particles)?;
        let true_states: Option<Vec<usize>> = set
            .particles
            .iter()
            .map(|p| {
                p.class
                    .filter(|&c| c >= 1 && c as usize <= n_states)
                    .map(|c| c as usize - 1)
            })
            .collect();
        classes = true_states;
    }
    let count = |states: &mut dyn Iterator<Item = usize>| -> Vec<f64> {
        let mut counts = vec![0usize; n_states];
        let mut total = 0usize;
        for j in states {
            counts[j] += 1;
            total += 1;
        }
        counts
            .iter()
            .map(|&c| c as f64 / total.max(1) as f64)
            .collect()
    };
    let fractions = match &classes {
        Some(c) => Some(count(&mut c.iter().copied())),
        None if ground.discrete && !ground.particle_values.is_empty() => Some(count(
            &mut ground.particle_values.iter().map(|&v| ground.nearest(v)),
        )),
        None => None,
    };
    Ok(Truth {
        ground,
        classes,
        fractions,
    })
}

/// Fails unless the truth's particles are the classification's: as many, and the same images
/// in the same order where both name them.
fn check_same_particles(
    truth: &ParticleSet,
    truth_path: &Path,
    classified: &ParticleSet,
    particles: &Path,
) -> Result<()> {
    let count = classified.len();
    ensure!(
        truth.len() == count,
        "{}: {} particles, but the classification's {} has {count}; expected the same particles",
        truth_path.display(),
        truth.len(),
        particles.display()
    );
    for (i, (t, c)) in truth
        .particles
        .iter()
        .zip(&classified.particles)
        .enumerate()
    {
        if let (Some(a), Some(b)) = (&t.image, &c.image) {
            let same = a.index == b.index && a.path.file_name() == b.path.file_name();
            ensure!(
                same,
                "{}: particle {} is image {}@{}, but particle {} of {} is {}@{}; expected the same particles in the same order",
                truth_path.display(),
                i + 1,
                a.index + 1,
                a.path.display(),
                i + 1,
                particles.display(),
                b.index + 1,
                b.path.display()
            );
        }
    }
    Ok(())
}

/// The share of particles whose class is matched to their true state.
fn accuracy_under(assigned: &[usize], true_states: &[usize], matching: &[Option<usize>]) -> f64 {
    let right = assigned
        .iter()
        .zip(true_states)
        .filter(|&(&k, &j)| matching[k] == Some(j))
        .count();
    right as f64 / assigned.len().max(1) as f64
}

/// The result in a sentence or two.
fn summary(c: &Classification) -> String {
    let mut parts = Vec::new();
    if c.states.is_empty() {
        parts.push(format!(
            "{} classes; no ground truth was given (--truth), so nothing is measured against one.",
            c.classes
        ));
    } else {
        let matched: Vec<String> = c
            .per_class
            .iter()
            .filter_map(|s| {
                let state = s.state.as_ref()?;
                let r = s.fsc.as_ref()?;
                Some(format!(
                    "class {} matches {state} (FSC 0.5 at {} Å, {} of Nyquist)",
                    s.class,
                    fmt_opt(r.resolution_angstrom.half, 1),
                    fmt_opt(r.resolution_nyquist_fraction.half, 2)
                ))
            })
            .collect();
        parts.push(format!("{}.", matched.join("; ")));
        if let Some(d) = c.pi_max_difference_points {
            parts.push(format!(
                "π differs from the states' true shares by at most {d:.1} points."
            ));
        }
        if let Some(a) = c.accuracy {
            parts.push(format!(
                "{:.1} % of the {} particles are in the class matched to their true state.",
                100.0 * a,
                c.particles
            ));
        }
    }
    sentence_case(&parts.join(" "))
}

/// The table of each class: its state, π against the truth, its FSC against the state and its
/// half-set resolution.
fn table(c: &Classification) -> String {
    let pct = |x: Option<f64>| x.map_or("–".into(), |v| format!("{:.1} %", 100.0 * v));
    let mut html = String::from(
        "<table><tr><th>class</th><th>state</th><th>π</th><th>true share</th><th>FSC 0.5 (Å)</th><th>FSC 0.5 (Nyquist)</th><th>FSC 0.143 (Å)</th><th>AreaFSC</th><th>half-set 0.143 (Å)</th></tr>",
    );
    for s in &c.per_class {
        let truth = s.state.as_ref().and_then(|name| {
            c.proportions
                .iter()
                .find(|p| &p.state == name)
                .and_then(|p| p.true_fraction)
        });
        let r = s.fsc.as_ref();
        html += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.class,
            escape(s.state.as_deref().unwrap_or("–")),
            pct(Some(s.pi)),
            pct(truth),
            fmt_opt(r.and_then(|r| r.resolution_angstrom.half), 1),
            fmt_opt(r.and_then(|r| r.resolution_nyquist_fraction.half), 3),
            fmt_opt(r.and_then(|r| r.resolution_angstrom.gold), 1),
            r.map_or("–".into(), |r| format!("{:.3}", r.area)),
            fmt_opt(
                Some(s.half_set_resolution_angstrom).filter(|v| v.is_finite()),
                1
            ),
        );
    }
    html += "</table>";
    if let Some(a) = c.accuracy {
        html += &format!(
            "<p>Accuracy: {:.1} % of {} particles.</p>",
            100.0 * a,
            c.particles
        );
    }
    html
}

#[cfg(test)]
mod tests {
    /// Every file this module writes is in OUTPUTS, which the overwrite check is given.
    #[test]
    fn every_output_is_listed() {
        crate::report::tests::assert_outputs_listed(
            include_str!("classification.rs"),
            &super::OUTPUTS,
            5,
        );
    }

    #[test]
    fn accuracy_counts_particles_whose_class_is_matched_to_their_state() {
        // Class 0 ↔ state 1, class 1 ↔ state 0; particles 0, 1, 3 right, 2 wrong.
        let matching = [Some(1), Some(0)];
        let a = super::accuracy_under(&[0, 1, 0, 1], &[1, 0, 0, 0], &matching);
        assert_eq!(a, 0.75);
    }
}
