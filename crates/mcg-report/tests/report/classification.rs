//! `report` on a classification folder made by hand from a small discrete set: class maps that
//! are the truth's states (renumbered, or turned by a known transform), a particles.star with a
//! known share of particles in the wrong class, and a model.json with a known π.

use std::path::{Path, PathBuf};

use mcg_classify::Init;
use mcg_classify::run::{IterationRecord, MODEL_JSON, Model, PARTICLES_STAR, map_name};
use mcg_dataset::folder::GroundTruth;
use mcg_dataset::monitor::Silent;
use mcg_dataset::synth::Preset;
use mcg_eval::Transform;
use mcg_formats::star::{self, StarOptions};
use mcg_physics::Volume;
use mcg_report::{Metrics, ReportSettings, report};

/// A classification folder: class k's map is `maps[k]`, particle i's class is
/// `class_of(i, true state of i)` (1-based), π is `pi`.
fn classification(
    dir: &Path,
    data: &Path,
    maps: &[Volume],
    pi: &[f64],
    class_of: impl Fn(usize, usize) -> u32,
) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for (k, map) in maps.iter().enumerate() {
        mcg_formats::mrc::write_volume(&dir.join(map_name(k)), map).unwrap();
    }
    let mut set =
        star::read_particles(&data.join("particles.star"), &StarOptions::default()).unwrap();
    for (i, p) in set.particles.iter_mut().enumerate() {
        let truth = p.class.expect("synth records the true class") as usize - 1;
        p.class = Some(class_of(i, truth));
    }
    star::write_particles(&dir.join(PARTICLES_STAR), &set).unwrap();
    let record =
        |iteration: usize, log_likelihood: f64, changed: f64, pi: Vec<f64>| IterationRecord {
            iteration,
            log_likelihood,
            pi,
            changed,
            resolution_a: vec![25.0, 30.0],
            resolution_nyquist: vec![0.8, 2.0 / 3.0],
            r_max: 7.0,
            angular_step_deg: 7.5,
            rotations: 100,
            seconds: 1.5,
        };
    let model = Model {
        classes: maps.len(),
        box_size: 16,
        apix: 10.0,
        maps: (0..maps.len()).map(map_name).collect(),
        pi: pi.to_vec(),
        history: vec![
            record(0, -120.0, 1.0, vec![0.5, 0.5]),
            record(1, -100.0, 0.1, pi.to_vec()),
        ],
        noise_sigma: 1.0,
        noise_source: "manifest".into(),
        offsets: vec![[0.0, 0.0]],
        init: Init::Pca,
        seed: 0,
        recentred_voxels: [0.0; 3],
        converged_at: None,
        settled_at: None,
        out_of_time_at: None,
    };
    std::fs::write(dir.join(MODEL_JSON), serde_json::to_string(&model).unwrap()).unwrap();
    dir.to_path_buf()
}

fn scored(run: &Path, data: &Path, out: &Path) -> anyhow::Result<Metrics> {
    let mut s = ReportSettings::new(run, out);
    s.truth = Some(data.to_path_buf());
    report(&s, &Silent::new())
}

#[test]
fn a_classification_is_scored_against_its_truth() {
    let dir = tempfile::tempdir().unwrap();
    // 64 discrete Hsp90 particles (closed 25 %, open 75 %) of 16² at 10 Å.
    let data = crate::set_of(dir.path(), Preset::Hsp90Discrete);
    let truth = GroundTruth::load(&data, 10.0).unwrap();
    // The discrete states are the ends of the path the maps run along.
    let last = truth.states.len() - 1;
    let (closed, open) = (truth.states[0].1.clone(), truth.states[last].1.clone());
    let true_classes: Vec<usize> =
        star::read_particles(&data.join("particles.star"), &StarOptions::default())
            .unwrap()
            .particles
            .iter()
            .map(|p| p.class.unwrap() as usize - 1)
            .collect();
    let n = true_classes.len() as f64;
    let closed_share = true_classes.iter().filter(|&&c| c == 0).count() as f64 / n;

    // Class 1 is the open state and class 2 the closed one (swapped numbers); every eighth
    // particle is put in the wrong class: accuracy 7/8 exactly.
    let swapped = |i: usize, truth: usize| -> u32 {
        let right = if truth == 0 { 2 } else { 1 };
        if i.is_multiple_of(8) {
            3 - right
        } else {
            right
        }
    };
    let pi = [0.7, 0.3];
    let cls = classification(
        &dir.path().join("cls"),
        &data,
        &[open.clone(), closed.clone()],
        &pi,
        swapped,
    );
    let out = dir.path().join("report");
    let m = scored(&cls, &data, &out).unwrap();
    let c = m.classification.as_ref().expect("a classification section");
    assert_eq!(
        c.states,
        vec![truth.states[0].0.clone(), truth.states[last].0.clone()]
    );
    assert_eq!(
        c.per_class[0].state.as_deref(),
        Some(truth.states[last].0.as_str())
    );
    assert_eq!(
        c.per_class[1].state.as_deref(),
        Some(truth.states[0].0.as_str())
    );
    assert!(!m.alignment.alpha_0_is_first_state);
    assert_eq!(c.accuracy, Some(56.0 / 64.0));
    assert_eq!(c.particles, 64);
    // π against the truth's shares, as constructed.
    assert_eq!(c.proportions[0].class, Some(2));
    assert_eq!(c.proportions[0].true_fraction, Some(closed_share));
    assert_eq!(c.proportions[0].pi, 0.3);
    assert_eq!(c.proportions[1].pi, 0.7);
    let expected = 100.0
        * (0.3 - closed_share)
            .abs()
            .max((0.7 - (1.0 - closed_share)).abs());
    assert!((c.pi_max_difference_points.unwrap() - expected).abs() < 1e-9);
    // An unmoved class against its own state: FSC 1 to Nyquist (no crossing, area 1).
    for s in &c.per_class {
        let r = s.fsc.as_ref().unwrap();
        assert_eq!(r.resolution_angstrom.gold, None, "{s:?}");
        assert!(r.area > 0.999_999, "{s:?}");
    }
    assert_eq!(c.per_class[0].half_set_resolution_angstrom, 25.0);
    assert_eq!(c.history.len(), 2);
    assert_eq!(c.history[1].pi, pi.to_vec());
    assert_eq!(m.training.steps, 1);
    // The same numbers on disk; the page opens with the result.
    let on_disk: Metrics =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(on_disk.classification, m.classification);
    for name in mcg_report::classification::OUTPUTS {
        assert!(out.join(name).is_file(), "{name} missing");
    }
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let (result, fsc) = (
        html.find("<h2>Result</h2>").unwrap(),
        html.find("FSC of the classes").unwrap(),
    );
    assert!(result < fsc && html.contains("87.5 %"), "{html}");

    // The classes turned (90° about z, the other hand, a shift: an exact permutation of the
    // voxels) are found back and matched the same way.
    let turn = Transform {
        rotation: [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
        flipped: true,
        shift_voxels: [1.0, 0.0, -1.0],
    };
    let turned = classification(
        &dir.path().join("turned"),
        &data,
        &[turn.apply(&open), turn.apply(&closed)],
        &pi,
        swapped,
    );
    let m = scored(&turned, &data, &dir.path().join("turned-report")).unwrap();
    let c = m.classification.unwrap();
    assert!(m.alignment.flipped, "{:?}", m.alignment);
    assert_eq!(
        c.per_class[0].state.as_deref(),
        Some(truth.states[last].0.as_str())
    );
    assert_eq!(c.accuracy, Some(56.0 / 64.0));
    for s in &c.per_class {
        assert!(s.fsc.as_ref().unwrap().area > 0.9, "{s:?}");
    }

    // A class number beyond K is refused naming the file and the field, before any output.
    let bad = classification(
        &dir.path().join("bad"),
        &data,
        &[open, closed],
        &pi,
        |_, _| 3,
    );
    let bad_out = dir.path().join("bad-report");
    let err = format!("{:#}", scored(&bad, &data, &bad_out).unwrap_err());
    assert!(
        err.contains("particles.star") && err.contains("_rlnClassNumber 3"),
        "{err}"
    );
    assert!(!bad_out.exists());
}
