//! RELION 3.1's 3D classification beside ours: `relion_refine --K 2` on the smallest box's set,
//! from the same reference, with the same threads, timed and scored against the truth as ours
//! is ([`super::score`]).
//!
//! RELION reads the set's images and CTFs through a copy of its particles.star without the
//! truth's columns (`_rlnClassNumber`, the poses, `_mcgBeta`), written beside it by mcg-formats'
//! writer, and runs in the set's folder (RELION resolves `000001@particles.mrcs` against its
//! working folder). The settings are those of RELION's 3D classification job with the issue's
//! choices ([`args`]): K = 2, 15° (HEALPix order 2, with oversampling 7.5° in the fine pass),
//! `--tau2_fudge 4`, `--firstiter_cc` (the reference is not on the data's grey scale; ours
//! scales it to the data too), the reference low-passed to 0.3 of Nyquist in the first
//! iteration (`--ini_high`, ours' `--initial-resolution`), no offset search (the sets have no
//! shifts and our classify searches none on them), a fixed number of iterations
//! ([`ITERATIONS`]) and a fixed seed.
//!
//! Its time is the process's wall time; each iteration's `_data.star` (classes) and
//! `_model.star` (`_rlnClassDistribution`, `_rlnReferenceImage`) are read, so the history holds
//! the seconds to each iteration (the files' modification times), π and the accuracy, and
//! [`converged`] names the first iteration from which the accuracy stays within
//! [`CONVERGED_POINTS`] points of the last. Any failure is recorded (with the tail of RELION's
//! stderr) and leaves our figures standing.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, ensure};
use mcg_formats::star::{self, StarOptions};
use serde_json::{Value, json};

use super::{CLASSES, Quality, Set, better_labelling, classes_of, quality_line, read_maps};

/// RELION's iterations: 25, the default of its 3D classification job. On the 2,000-image
/// 32² set its classes have split by then (see README's bench section for the run).
pub const ITERATIONS: usize = 25;
/// The diameter of RELION's circular mask, Å: the open dimer keeps 99.8 % of its density
/// within 75 Å of the centre (the box is 160 Å).
pub const DIAMETER_A: f64 = 150.0;
/// The first iteration's low-pass, as a fraction of Nyquist (our classify's
/// `--initial-resolution` default).
pub const INITIAL_RESOLUTION_NYQUIST: f64 = 0.3;
/// RELION's random seed (fixed, so that reruns on one machine agree).
pub const SEED: u64 = 1;
/// The accuracy is converged once it stays within this many points of the last iteration's.
pub const CONVERGED_POINTS: f64 = 1.0;
/// Lines of RELION's stderr kept when it fails.
const STDERR_LINES: usize = 20;
/// The blind copy of the set's particles.star that RELION reads, in the set's folder.
const BLIND_STAR: &str = "relion_particles.star";

/// One iteration of RELION's run.
#[derive(Debug, Clone, PartialEq)]
pub struct Iteration {
    /// 1-based.
    pub iteration: usize,
    /// From the start of relion_refine to its `_data.star`.
    pub seconds: f64,
    pub pi: Vec<f64>,
    /// Under the better labelling.
    pub accuracy: f64,
}

/// A RELION run that finished and was scored.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub version: String,
    /// The command line, as run in the set's folder.
    pub command: String,
    pub box_size: usize,
    pub images: usize,
    pub threads: usize,
    /// relion_refine end to end (reading the set included).
    pub seconds: f64,
    pub peak_rss_mib: Option<f64>,
    pub history: Vec<Iteration>,
    pub quality: Quality,
    /// The class maps' box and voxel size, Å.
    pub map_box: usize,
    pub map_apix: f64,
}

/// RELION's part of the benchmark.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// relion_refine is not on the PATH.
    Absent,
    /// It ran (or was to run) and failed: the command and why (its stderr's tail).
    Failed {
        version: String,
        command: String,
        box_size: usize,
        reason: String,
    },
    Ran(Box<Run>),
}

/// What RELION's model.star says of its classes.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// `_rlnClassDistribution`, per class.
    pub pi: Vec<f64>,
    /// `_rlnReferenceImage`, per class, as written (relative to RELION's working folder, or
    /// absolute).
    pub maps: Vec<PathBuf>,
}

/// Reads a RELION `_model.star`'s `data_model_classes` table; an error names the file and what
/// is missing.
pub fn read_model(path: &Path) -> Result<Model> {
    let file = star::read_star(path).with_context(|| format!("reading {}", path.display()))?;
    let table = file
        .block("model_classes")
        .and_then(|b| b.table.as_ref())
        .with_context(|| format!("{}: no data_model_classes table", path.display()))?;
    let column = |label: &str| {
        table
            .column(label)
            .with_context(|| format!("{}: data_model_classes has no {label}", path.display()))
    };
    let (pi_col, map_col) = (
        column("_rlnClassDistribution")?,
        column("_rlnReferenceImage")?,
    );
    let pi = table
        .column_values(pi_col)
        .map(|v| {
            v.parse::<f64>().with_context(|| {
                format!(
                    "{}: _rlnClassDistribution {v:?} is not a number",
                    path.display()
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    ensure!(
        !pi.is_empty(),
        "{}: data_model_classes is empty",
        path.display()
    );
    let maps = table.column_values(map_col).map(PathBuf::from).collect();
    Ok(Model { pi, maps })
}

/// relion_refine's arguments: the blind star and the reference in the set's folder (`star`,
/// `reference`), the output root, the images' pixel size and the threads.
pub fn args(star: &str, reference: &str, root: &str, apix: f64, threads: usize) -> Vec<String> {
    let ini_high = 2.0 * apix / INITIAL_RESOLUTION_NYQUIST;
    let mut a: Vec<String> = ["--i", star, "--o", root, "--ref", reference]
        .map(String::from)
        .to_vec();
    for (flag, value) in [
        ("--K", CLASSES.to_string()),
        ("--iter", ITERATIONS.to_string()),
        ("--healpix_order", "2".into()),
        ("--oversampling", "1".into()),
        ("--tau2_fudge", "4".into()),
        ("--particle_diameter", format!("{DIAMETER_A}")),
        ("--ini_high", format!("{ini_high:.1}")),
        ("--offset_range", "0".into()),
        ("--offset_step", "1".into()),
        ("--sym", "C1".into()),
        ("--pad", "2".into()),
        ("--pool", "3".into()),
        ("--j", threads.to_string()),
        ("--random_seed", SEED.to_string()),
    ] {
        a.push(flag.into());
        a.push(value);
    }
    for flag in [
        "--ctf",
        "--firstiter_cc",
        "--flatten_solvent",
        "--zero_mask",
        "--norm",
        "--scale",
        "--dont_combine_weights_via_disc",
    ] {
        a.push(flag.into());
    }
    a
}

/// The first iteration from which the accuracy stays within [`CONVERGED_POINTS`] points of the
/// last iteration's, with its seconds; `None` for an empty history.
pub fn converged(history: &[Iteration]) -> Option<&Iteration> {
    let last = history.last()?.accuracy;
    let settled = history
        .iter()
        .rev()
        .take_while(|h| (100.0 * (h.accuracy - last)).abs() <= CONVERGED_POINTS)
        .count();
    history.get(history.len() - settled)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs RELION's classification on `set` in `work`/relion_{box}, scores it against the set's
/// truth, and returns what happened; never an error.
pub fn run(set: &Set, work: &Path, images: usize, threads: usize, version: &str) -> Outcome {
    let b = set.box_size;
    let root = work.join(format!("relion_{b}")).join("run");
    let apix = super::EXTENT_A / b as f64;
    let reference = set.reference.to_string_lossy().into_owned();
    let args = args(
        BLIND_STAR,
        &reference,
        &root.to_string_lossy(),
        apix,
        threads,
    );
    let command = format!("relion_refine {}", args.join(" "));
    eprintln!(
        "bench: RELION 3D classification at {b}²: {images} images, {CLASSES} classes, \
         {ITERATIONS} iterations, {threads} threads"
    );
    match run_and_score(set, &root, &args) {
        Ok((seconds, peak_rss_mib, history, quality, (map_box, map_apix))) => {
            Outcome::Ran(Box::new(Run {
                version: version.into(),
                command,
                box_size: b,
                images,
                threads,
                seconds,
                peak_rss_mib,
                history,
                quality,
                map_box,
                map_apix,
            }))
        }
        Err(e) => {
            let reason = tail(&format!("{e:#}"), STDERR_LINES);
            eprintln!("bench: RELION could not be run or scored: {reason}");
            Outcome::Failed {
                version: version.into(),
                command,
                box_size: b,
                reason,
            }
        }
    }
}

type Scored = (f64, Option<f64>, Vec<Iteration>, Quality, (usize, f64));

fn run_and_score(set: &Set, root: &Path, args: &[String]) -> Result<Scored> {
    write_blind_star(&set.star, &set.dir.join(BLIND_STAR))?;
    let out = root.parent().expect("root is inside a folder");
    std::fs::remove_dir_all(out).ok();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = SystemTime::now();
    let m = super::super::measured_in(Some(&set.dir), Path::new("relion_refine"), &args)?;
    let file =
        |it: usize, what: &str| PathBuf::from(format!("{}_it{it:03}_{what}.star", root.display()));
    let mut history = Vec::with_capacity(ITERATIONS);
    let mut last = None;
    for it in 1..=ITERATIONS {
        let (data, model) = (file(it, "data"), file(it, "model"));
        let assigned = classes_of(&data, CLASSES)?;
        let m = read_model(&model)?;
        let (accuracy, _) = better_labelling(&assigned, &set.truth.classes)
            .with_context(|| data.display().to_string())?;
        let written = std::fs::metadata(&data)
            .and_then(|d| d.modified())
            .with_context(|| format!("reading the time of {}", data.display()))?;
        history.push(Iteration {
            iteration: it,
            seconds: written
                .duration_since(start)
                .map_or(0.0, |d| d.as_secs_f64()),
            pi: m.pi.clone(),
            accuracy,
        });
        last = Some((assigned, m));
    }
    let (assigned, model) = last.context("no iteration")?;
    let maps: Vec<PathBuf> = model.maps.iter().map(|p| set.dir.join(p)).collect();
    let maps = read_maps(&maps)?;
    let map = (maps[0].box_size(), f64::from(maps[0].apix()));
    let quality = super::score(&assigned, &model.pi, &maps, &set.truth)?;
    Ok((m.secs, m.peak_rss_mib, history, quality, map))
}

/// Writes to `out` the particles of `star` without the truth: no class, no pose, no extra
/// column; `_rlnImageDimensionality` 2 in the optics groups (RELION assumes it, with a
/// warning, where it is missing).
fn write_blind_star(star: &Path, out: &Path) -> Result<()> {
    let mut set = star::read_particles(star, &StarOptions::default())
        .with_context(|| format!("reading {}", star.display()))?;
    for p in &mut set.particles {
        p.class = None;
        p.pose = None;
    }
    set.extra.clear();
    for o in &mut set.optics {
        o.extra
            .retain(|(label, _)| label != "_rlnImageDimensionality");
        o.extra.push(("_rlnImageDimensionality".into(), "2".into()));
    }
    star::write_particles(out, &set).with_context(|| format!("writing {}", out.display()))
}

impl Outcome {
    /// classify.json's `relion`: the run's settings, time and quality, or why it did not run.
    pub fn json(&self) -> Value {
        match self {
            Self::Absent => json!({
                "status": "absent",
                "reason": "relion_refine is not on the PATH (apt-get install relion)",
            }),
            Self::Failed {
                version,
                command,
                box_size,
                reason,
            } => json!({
                "status": "failed",
                "version": version,
                "box": box_size,
                "command": command,
                "reason": reason,
            }),
            Self::Ran(r) => {
                let done = converged(&r.history);
                json!({
                    "status": "ran",
                    "version": r.version,
                    "box": r.box_size,
                    "images": r.images,
                    "threads": r.threads,
                    "command": r.command,
                    "working_folder": "the set's folder (image names resolve against it)",
                    "iterations": r.history.len(),
                    "seconds": r.seconds,
                    "seconds_per_iteration": r.seconds / r.history.len().max(1) as f64,
                    "peak_rss_mib": r.peak_rss_mib,
                    "converged": done.map(|h| json!({
                        "iteration": h.iteration,
                        "seconds": h.seconds,
                        "criterion": format!(
                            "the first iteration from which the accuracy stays within \
                             {CONVERGED_POINTS} point(s) of the last iteration's"
                        ),
                    })),
                    "map_box": r.map_box,
                    "map_pixel_size_A": r.map_apix,
                    "quality": super::quality_json(&Ok(r.quality.clone())),
                    "history": r.history.iter().map(|h| json!({
                        "iteration": h.iteration, "seconds": h.seconds, "pi": h.pi,
                        "accuracy": h.accuracy,
                    })).collect::<Vec<_>>(),
                    "input": "the set's particles.star without _rlnClassNumber, the poses and \
                        _mcgBeta (the same images, CTFs and optics)",
                })
            }
        }
    }

    /// bench.json's `relion`: status, seconds, accuracy and π.
    pub fn summary(&self) -> Value {
        match self {
            Self::Ran(r) => json!({
                "status": "ran", "version": r.version, "box": r.box_size,
                "iterations": r.history.len(), "seconds": r.seconds,
                "accuracy": r.quality.accuracy,
                "pi": r.quality.classes.iter().map(|c| c.pi).collect::<Vec<_>>(),
            }),
            other => {
                let mut v = other.json();
                if let Some(o) = v.as_object_mut() {
                    o.remove("command");
                }
                v
            }
        }
    }

    /// The table's line.
    pub fn line(&self) -> String {
        match self {
            Self::Absent => "RELION: not run (relion_refine is not on the PATH; apt-get install \
                 relion)"
                .into(),
            Self::Failed {
                box_size, reason, ..
            } => format!("RELION {box_size}²: failed ({reason})"),
            Self::Ran(r) => {
                let done = converged(&r.history).map_or(String::new(), |h| {
                    format!(
                        ", accuracy settled from iteration {} ({:.0} s)",
                        h.iteration, h.seconds
                    )
                });
                format!(
                    "RELION {}², {} iterations, {:.0} s{done}: {}",
                    r.box_size,
                    r.history.len(),
                    r.seconds,
                    quality_line(&Ok(r.quality.clone()))
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{scratch, two_states};
    use super::*;

    /// The head of a RELION 3.1 `_model.star` as relion_refine writes it (a 32², K = 2 run; the
    /// per-class spectra tables left out).
    const MODEL_STAR: &str = "
# version 30001

data_model_general

_rlnReferenceDimensionality                        3
_rlnDataDimensionality                             2
_rlnOriginalImageSize                             32
_rlnCurrentResolution                      17.777778
_rlnPixelSize                               5.000000
_rlnNrClasses                                      2
_rlnTau2FudgeFactor                         4.000000
_rlnLogLikelihood                       8.298101e+06
 

# version 30001

data_model_classes

loop_ 
_rlnReferenceImage #1 
_rlnClassDistribution #2 
_rlnAccuracyRotations #3 
_rlnAccuracyTranslationsAngst #4 
_rlnEstimatedResolution #5 
_rlnOverallFourierCompleteness #6 
/bench/work/relion_32/run_it025_class001.mrc     0.262150     8.130000     0.000000    17.777778     1.000000 
relion_32/run_it025_class002.mrc     0.737850     5.940000     0.000000    16.000000     1.000000 
 

# version 30001

data_model_class_1

loop_ 
_rlnSpectralIndex #1 
_rlnResolution #2 
_rlnSsnrMap #3 
           0     0.000000 9.520532e+05 
           1     0.006250 1.080209e+05 
";

    #[test]
    fn relions_model_star_gives_pi_and_the_class_maps() {
        let dir = scratch("model-star");
        let path = dir.join("run_it025_model.star");
        std::fs::write(&path, MODEL_STAR).unwrap();
        let m = read_model(&path).unwrap();
        assert_eq!(m.pi, [0.26215, 0.73785]);
        assert_eq!(
            m.maps,
            [
                PathBuf::from("/bench/work/relion_32/run_it025_class001.mrc"),
                PathBuf::from("relion_32/run_it025_class002.mrc")
            ]
        );
        // Errors name the file and what is missing.
        std::fs::write(
            &path,
            MODEL_STAR.replace("_rlnClassDistribution", "_rlnOther"),
        )
        .unwrap();
        let err = read_model(&path).unwrap_err().to_string();
        assert!(
            err.contains("run_it025_model.star") && err.contains("_rlnClassDistribution"),
            "{err}"
        );
        std::fs::write(&path, MODEL_STAR.replace("0.737850", "nan?")).unwrap();
        let err = read_model(&path).unwrap_err().to_string();
        assert!(err.contains("\"nan?\""), "{err}");
        std::fs::write(&path, MODEL_STAR.replace("data_model_classes", "data_x")).unwrap();
        let err = read_model(&path).unwrap_err().to_string();
        assert!(err.contains("no data_model_classes table"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_blind_star_keeps_images_and_ctfs_and_drops_the_truth() {
        let dir = scratch("blind");
        let (truth_star, blind) = (dir.join("particles.star"), dir.join(BLIND_STAR));
        std::fs::write(&truth_star, super::super::tests::RELION_DATA_STAR).unwrap();
        write_blind_star(&truth_star, &blind).unwrap();
        let text = std::fs::read_to_string(&blind).unwrap();
        for gone in [
            "_rlnClassNumber",
            "_rlnAngleRot",
            "_rlnAnglePsi",
            "_rlnNormCorrection",
        ] {
            assert!(!text.contains(gone), "{gone} in\n{text}");
        }
        assert_eq!(text.matches("_rlnImageDimensionality").count(), 1, "{text}");
        let (a, b) = (
            star::read_particles(&truth_star, &StarOptions::default()).unwrap(),
            star::read_particles(&blind, &StarOptions::default()).unwrap(),
        );
        assert_eq!(b.len(), 3);
        for (p, q) in a.particles.iter().zip(&b.particles) {
            assert_eq!((&p.image, &p.ctf, &p.shift), (&q.image, &q.ctf, &q.shift));
            assert_eq!((q.class, q.pose), (None, None));
        }
        assert_eq!(a.optics[0].pixel_size, b.optics[0].pixel_size);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_command_is_relions_3d_classification_with_the_issues_settings() {
        let a = args(
            "relion_particles.star",
            "/s/reference.mrc",
            "/w/run",
            5.0,
            2,
        );
        let value = |flag: &str| {
            let i = a
                .iter()
                .position(|x| x == flag)
                .unwrap_or_else(|| panic!("{flag}"));
            a[i + 1].clone()
        };
        assert_eq!(value("--i"), "relion_particles.star");
        assert_eq!(value("--ref"), "/s/reference.mrc");
        assert_eq!(value("--o"), "/w/run");
        assert_eq!(value("--K"), "2");
        assert_eq!(value("--iter"), ITERATIONS.to_string());
        assert_eq!(value("--healpix_order"), "2");
        assert_eq!(value("--tau2_fudge"), "4");
        // 0.3 of Nyquist at 5 Å pixels: 1 / (0.3 × 0.1 Å⁻¹).
        assert_eq!(value("--ini_high"), "33.3");
        assert_eq!(value("--j"), "2");
        assert_eq!(value("--particle_diameter"), "150");
        for flag in [
            "--ctf",
            "--firstiter_cc",
            "--flatten_solvent",
            "--zero_mask",
        ] {
            assert!(a.iter().any(|x| x == flag), "{flag}");
        }
        let b = args("p.star", "r.mrc", "o", 2.5, 1);
        assert_eq!(
            b[b.iter().position(|x| x == "--ini_high").unwrap() + 1],
            "16.7"
        );
    }

    fn iteration(iteration: usize, accuracy: f64) -> Iteration {
        Iteration {
            iteration,
            seconds: 10.0 * iteration as f64,
            pi: vec![0.5, 0.5],
            accuracy,
        }
    }

    #[test]
    fn convergence_is_the_first_iteration_that_stays_near_the_last() {
        let h = [
            iteration(1, 0.6),
            iteration(2, 0.82),
            iteration(3, 0.7),
            iteration(4, 0.905),
            iteration(5, 0.907),
            iteration(6, 0.9),
        ];
        assert_eq!(converged(&h).unwrap().iteration, 4);
        assert_eq!(converged(&h[..3]).unwrap().iteration, 3);
        assert_eq!(converged(&[]), None);
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\nd", 2), "c\nd");
        assert_eq!(tail("only", 5), "only");
    }

    #[test]
    fn every_outcome_has_its_json_and_line() {
        let truth = two_states(vec![0, 1, 1, 1]);
        let maps = [truth.states[0].1.clone(), truth.states[1].1.clone()];
        let quality = super::super::score(&[0, 1, 1, 0], &[0.3, 0.7], &maps, &truth).unwrap();
        let run = Outcome::Ran(Box::new(Run {
            version: "RELION version: 3.1.3".into(),
            command: "relion_refine --K 2".into(),
            box_size: 32,
            images: 4,
            threads: 2,
            seconds: 60.0,
            peak_rss_mib: Some(300.0),
            history: vec![iteration(1, 0.5), iteration(2, 0.75), iteration(3, 0.75)],
            quality,
            map_box: 16,
            map_apix: 10.0,
        }));
        let doc = run.json();
        assert_eq!(doc["status"], "ran");
        assert_eq!(doc["version"], "RELION version: 3.1.3");
        assert_eq!(doc["command"], "relion_refine --K 2");
        assert_eq!(doc["iterations"], 3);
        assert_eq!(doc["seconds"], 60.0);
        assert_eq!(doc["seconds_per_iteration"], 20.0);
        assert_eq!(doc["converged"]["iteration"], 2);
        assert_eq!(doc["converged"]["seconds"], 20.0);
        assert_eq!(doc["quality"]["accuracy"], 0.75);
        assert_eq!(doc["quality"]["pi"], json!([0.3, 0.7]));
        assert_eq!(doc["quality"]["classes"][0]["state"], "closed");
        assert_eq!(doc["history"][1]["accuracy"], 0.75);
        assert_eq!(doc["map_box"], 16);
        let s = run.summary();
        assert_eq!(
            (s["status"].as_str(), s["accuracy"].as_f64()),
            (Some("ran"), Some(0.75))
        );
        let line = run.line();
        assert!(
            line.contains("RELION 32², 3 iterations, 60 s") && line.contains("75.0 % right"),
            "{line}"
        );
        assert!(line.contains("from iteration 2"), "{line}");

        let failed = Outcome::Failed {
            version: "RELION version: 3.1.3".into(),
            command: "relion_refine --K 2".into(),
            box_size: 32,
            reason: "ERROR: no images".into(),
        };
        let doc = failed.json();
        assert_eq!(
            (doc["status"].as_str(), doc["reason"].as_str()),
            (Some("failed"), Some("ERROR: no images"))
        );
        assert_eq!(doc["command"], "relion_refine --K 2");
        assert!(failed.summary().get("command").is_none());
        assert_eq!(failed.summary()["reason"], "ERROR: no images");
        assert!(failed.line().contains("failed (ERROR: no images)"));

        assert_eq!(Outcome::Absent.json()["status"], "absent");
        assert!(Outcome::Absent.line().contains("not on the PATH"));
    }
}
