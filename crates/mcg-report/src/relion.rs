//! A RELION 3D classification (`relion_refine --K`), read for the classification's report: its
//! `run_itNNN_model.star` names the class maps (`_rlnReferenceImage`, looked up beside the
//! model file, where RELION writes them) and π (`_rlnClassDistribution`); the
//! `run_itNNN_data.star` beside it holds each particle's `_rlnClassNumber`. The earlier
//! iterations' files in the same folder give the history: the log-likelihood per image
//! (`_rlnLogLikelihood` over the particles), π, each class's `_rlnEstimatedResolution`, the share
//! of particles that changed class, and the seconds between the model files' modification
//! times. So a RELION classification is judged against a truth by the same code as ours.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, ensure};
use mcg_classify::Init;
use mcg_classify::run::{IterationRecord, Model};
use mcg_formats::star::{self, StarBlock, StarOptions};

/// A RELION classification as the report reads it.
pub(crate) struct RelionRun {
    /// Its numbers in the shape of our `model.json` (what RELION does not record is empty).
    pub model: Model,
    /// The class maps.
    pub maps: Vec<PathBuf>,
    /// The particles with their classes (`_data.star`).
    pub particles: PathBuf,
}

const MODEL_SUFFIX: &str = "_model.star";

/// Whether `path` is a RELION model file (`…_model.star`).
pub(crate) fn is_model_star(path: &Path) -> bool {
    path.is_file()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(MODEL_SUFFIX))
}

/// One iteration's model file: the classes' maps, π and resolutions, and the log-likelihood.
struct Iteration {
    maps: Vec<PathBuf>,
    pi: Vec<f64>,
    resolution_a: Vec<f64>,
    log_likelihood: f64,
    box_size: usize,
    apix: f64,
}

fn block<'a>(file: &'a star::StarFile, name: &str, path: &Path) -> Result<&'a StarBlock> {
    file.block(name).with_context(|| {
        format!(
            "{}: no data_{name} block, expected a RELION model file",
            path.display()
        )
    })
}

fn number(block: &StarBlock, label: &str, path: &Path) -> Result<f64> {
    let text = block
        .pair(label)
        .with_context(|| format!("{}: field {label} is missing", path.display()))?;
    text.trim().parse::<f64>().with_context(|| {
        format!(
            "{}: field {label} is {text:?}, expected a number",
            path.display()
        )
    })
}

fn read_iteration(path: &Path) -> Result<Iteration> {
    let file = star::read_star(path)?;
    let general = block(&file, "model_general", path)?;
    let classes = number(general, "_rlnNrClasses", path)?;
    let box_size = number(general, "_rlnOriginalImageSize", path)?;
    let apix = number(general, "_rlnPixelSize", path)?;
    ensure!(
        classes >= 1.0 && classes.fract() == 0.0,
        "{}: field _rlnNrClasses is {classes}, expected a count ≥ 1",
        path.display()
    );
    ensure!(
        box_size >= 2.0 && box_size.fract() == 0.0 && apix > 0.0,
        "{}: fields _rlnOriginalImageSize {box_size} and _rlnPixelSize {apix}, expected a box \
         and a voxel size",
        path.display()
    );
    let log_likelihood = number(general, "_rlnLogLikelihood", path)?;
    let table = block(&file, "model_classes", path)?
        .table
        .as_ref()
        .with_context(|| format!("{}: data_model_classes has no loop", path.display()))?;
    let column = |label: &str| {
        table.column(label).with_context(|| {
            format!(
                "{}: data_model_classes has no {label} column",
                path.display()
            )
        })
    };
    let (image, share, resolution) = (
        column("_rlnReferenceImage")?,
        column("_rlnClassDistribution")?,
        column("_rlnEstimatedResolution")?,
    );
    ensure!(
        table.len() == classes as usize,
        "{}: {} rows in data_model_classes, expected _rlnNrClasses = {classes}",
        path.display(),
        table.len()
    );
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut it = Iteration {
        maps: Vec::new(),
        pi: Vec::new(),
        resolution_a: Vec::new(),
        log_likelihood,
        box_size: box_size as usize,
        apix,
    };
    for row in 0..table.len() {
        let cell = |col: usize| table.get(row, col).unwrap_or("");
        // RELION names each map by its path from where it ran; the map lies beside the model.
        let name = Path::new(cell(image)).file_name().with_context(|| {
            format!(
                "{}: class {}: no _rlnReferenceImage",
                path.display(),
                row + 1
            )
        })?;
        it.maps.push(folder.join(name));
        for (label, col, into) in [
            ("_rlnClassDistribution", share, &mut it.pi),
            ("_rlnEstimatedResolution", resolution, &mut it.resolution_a),
        ] {
            let text = cell(col);
            into.push(text.parse::<f64>().with_context(|| {
                format!(
                    "{}: class {}: {label} is {text:?}, expected a number",
                    path.display(),
                    row + 1
                )
            })?);
        }
    }
    Ok(it)
}

/// Each particle's class (1-based) in a RELION data file, if every particle has one.
fn classes_of(path: &Path) -> Result<Option<Vec<u32>>> {
    let set = star::read_particles(path, &StarOptions::default())?;
    Ok(set.particles.iter().map(|p| p.class).collect())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).ok()?.modified().ok()
}

/// Reads RELION's classification at `model_star` (`…_itNNN_model.star`) and the iterations
/// before it in the same folder.
pub(crate) fn read_run(model_star: &Path) -> Result<RelionRun> {
    let name = model_star
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(MODEL_SUFFIX))
        .with_context(|| format!("{}: expected a RELION …_model.star", model_star.display()))?;
    let folder = model_star.parent().unwrap_or(Path::new("."));
    let data_of = |stem: &str| folder.join(format!("{stem}_data.star"));
    // `run_it025` → the prefix `run` and iteration 25; a name without `_itNNN` is one iteration.
    let (prefix, last) = match name.rfind("_it") {
        Some(at) if name.len() == at + 6 && name[at + 3..].bytes().all(|b| b.is_ascii_digit()) => (
            Some(&name[..at]),
            name[at + 3..].parse::<usize>().unwrap_or(0),
        ),
        _ => (None, 0),
    };
    let stems: Vec<(usize, String)> = match prefix {
        Some(p) => (0..=last)
            .map(|i| (i, format!("{p}_it{i:03}")))
            .filter(|(i, stem)| {
                *i == last || folder.join(format!("{stem}{MODEL_SUFFIX}")).is_file()
            })
            .collect(),
        None => vec![(0, name.to_string())],
    };
    let particles = data_of(name);
    let current = classes_of(&particles)?.with_context(|| {
        format!(
            "{}: a particle has no _rlnClassNumber, expected RELION's classes",
            particles.display()
        )
    })?;
    let count = current.len().max(1) as f64;
    let mut history = Vec::with_capacity(stems.len());
    let mut before: Option<(Vec<u32>, Option<SystemTime>)> = None;
    let mut last_iteration = None;
    for (i, stem) in &stems {
        let path = folder.join(format!("{stem}{MODEL_SUFFIX}"));
        let it = read_iteration(&path)?;
        let classes = if *i == last {
            Some(current.clone())
        } else {
            let data = data_of(stem);
            if data.is_file() {
                classes_of(&data)?
            } else {
                None
            }
        };
        let time = modified(&path);
        let changed = match (&before, &classes) {
            (Some((b, _)), Some(c)) if b.len() == c.len() => {
                b.iter().zip(c).filter(|(x, y)| x != y).count() as f64 / count
            }
            _ => 0.0,
        };
        let seconds = match (&before, time) {
            (Some((_, Some(t0))), Some(t1)) => {
                t1.duration_since(*t0).map_or(0.0, |d| d.as_secs_f64())
            }
            _ => 0.0,
        };
        let nyquist = 2.0 * it.apix;
        history.push(IterationRecord {
            iteration: *i,
            log_likelihood: it.log_likelihood / count,
            pi: it.pi.clone(),
            changed,
            resolution_nyquist: it
                .resolution_a
                .iter()
                .map(|r| (nyquist / r).min(1.0))
                .collect(),
            resolution_a: it.resolution_a.clone(),
            r_max: 0.0,
            angular_step_deg: f64::NAN,
            rotations: 0,
            seconds,
        });
        before = classes.map(|c| (c, time));
        last_iteration = Some(it);
    }
    let it = last_iteration.context("no iteration read")?;
    let k = it.maps.len();
    // Each class number's range is checked where the report reads the particles
    // (`classification::class_of_particles`), naming the particle.
    let model = Model {
        classes: k,
        box_size: it.box_size,
        apix: it.apix,
        maps: it
            .maps
            .iter()
            .map(|p| {
                p.file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned())
            })
            .collect(),
        pi: it.pi.clone(),
        history,
        noise_sigma: f64::NAN,
        noise_source: "RELION".into(),
        offsets: Vec::new(),
        init: Init::Random,
        seed: 0,
        recentred_voxels: [0.0; 3],
        converged_at: None,
        settled_at: None,
        out_of_time_at: None,
    };
    Ok(RelionRun {
        model,
        maps: it.maps,
        particles,
    })
}
