//! `multicryogan report` on a continuous set. The discrete chain (synth → train → sample →
//! report, every output file opened) is the end-to-end test in the top-level `tests/`.

use mcg_testdata::cli::png_size;
use serde_json::Value;

use crate::train::{SMALL, tiny_set_of};
use crate::{ok, s};

/// A 2-step run of the small paper recipe on the set `star`, in DIR/run.
pub fn small_run(dir: &std::path::Path, star: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("small.json");
    std::fs::write(&config, SMALL).unwrap();
    let run = dir.join("run");
    ok(&[
        "train",
        "--particles",
        s(star),
        "--out",
        s(&run),
        "--steps",
        "2",
        "--config",
        s(&config),
        "--device",
        "cpu",
        "-q",
    ]);
    run
}

#[test]
fn report_on_a_continuous_set_recovers_a_beta_curve_and_its_distance() {
    let dir = tempfile::tempdir().unwrap();
    let star = tiny_set_of(dir.path(), "hsp90-continuous");
    let data = star.parent().unwrap().to_path_buf();
    let run = small_run(dir.path(), &star);
    // A wrong --truth is found before anything is written (issue 13, class 2).
    let wrong = dir.path().join("wrong-report");
    let msg = crate::fails(&[
        "report",
        "--run",
        s(&run),
        "--truth",
        s(dir.path()),
        "--out",
        s(&wrong),
        "--device",
        "cpu",
    ]);
    assert!(
        msg.contains("ground_truth") || msg.contains("landscape"),
        "{msg}"
    );
    assert!(!wrong.exists(), "a failed report wrote {}", wrong.display());
    let out = dir.path().join("report");
    let printed = ok(&[
        "report",
        "--run",
        s(&run),
        "--truth",
        s(&data),
        "--out",
        s(&out),
        "--l",
        "4",
        "--history",
        "0",
        "--device",
        "cpu",
        "--json",
        "-q",
    ]);
    let m: Value = serde_json::from_str(&printed).expect("--json prints metrics.json");
    let c = &m["continuous"];
    assert_eq!(c["parameter"], "beta");
    let beta: Vec<f64> = c["recovered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(beta.len(), 5);
    assert!(beta.iter().all(|b| (0.0..=20.0).contains(b)), "{beta:?}");
    let w1 = c["wasserstein1"].as_f64().unwrap();
    assert!((0.0..=20.0).contains(&w1), "{w1}");
    assert!(m.get("fsc_history").is_none());
    assert!(png_size(&out.join("beta_alpha.png")).0 == 800);
}

/// `report` on a classification folder (class maps, particles.star, model.json) scores it
/// against the truth: here the classes are the truth's states with every particle in its true
/// class, so each class matches its state, FSC 1 to Nyquist, and accuracy 1.
#[test]
fn report_scores_a_classification_folder() {
    use mcg_classify::run::{IterationRecord, MODEL_JSON, Model, PARTICLES_STAR, map_name};
    use mcg_formats::star::{self, StarOptions};

    let dir = tempfile::tempdir().unwrap();
    let star_path = tiny_set_of(dir.path(), "hsp90-discrete");
    let data = star_path.parent().unwrap().to_path_buf();
    let truth = mcg_dataset::folder::GroundTruth::load(&data, 10.0).unwrap();
    let cls = dir.path().join("cls");
    std::fs::create_dir_all(&cls).unwrap();
    // The discrete states are the ends of the path the truth's maps run along.
    let states = [&truth.states[0], &truth.states[truth.states.len() - 1]];
    for (k, (_, map)) in states.iter().enumerate() {
        mcg_formats::mrc::write_volume(&cls.join(map_name(k)), map).unwrap();
    }
    let set = star::read_particles(&star_path, &StarOptions::default()).unwrap();
    star::write_particles(&cls.join(PARTICLES_STAR), &set).unwrap();
    let iteration = IterationRecord {
        iteration: 0,
        log_likelihood: -10.0,
        pi: vec![0.25, 0.75],
        changed: 1.0,
        resolution_a: vec![30.0, 30.0],
        resolution_nyquist: vec![2.0 / 3.0, 2.0 / 3.0],
        r_max: 5.0,
        angular_step_deg: 15.0,
        rotations: 10,
        seconds: 1.0,
    };
    let model = Model {
        classes: 2,
        box_size: 16,
        apix: 10.0,
        maps: vec![map_name(0), map_name(1)],
        pi: vec![0.25, 0.75],
        history: vec![iteration],
        noise_sigma: 1.0,
        noise_source: "manifest".into(),
        offsets: vec![[0.0, 0.0]],
        init: mcg_classify::Init::Random,
        seed: 1,
        recentred_voxels: [0.0; 3],
        converged_at: None,
        settled_at: None,
        out_of_time_at: None,
    };
    std::fs::write(cls.join(MODEL_JSON), serde_json::to_vec(&model).unwrap()).unwrap();
    let out = dir.path().join("cls-report");
    let printed = ok(&[
        "report",
        "--run",
        s(&cls),
        "--truth",
        s(&data),
        "--out",
        s(&out),
        "--json",
        "-q",
    ]);
    let m: Value = serde_json::from_str(&printed).expect("--json prints metrics.json");
    let c = &m["classification"];
    assert_eq!(c["accuracy"].as_f64(), Some(1.0), "{c}");
    for (k, class) in c["per_class"].as_array().unwrap().iter().enumerate() {
        assert_eq!(class["state"].as_str(), Some(states[k].0.as_str()));
        assert!(class["fsc"]["resolution_A"]["0.143"].is_null(), "{class}");
    }
    assert!(m.get("fsc_ends").is_none());
    assert!(png_size(&out.join("fsc_classes.png")).0 == 800);
    assert!(out.join("report.html").is_file());
}
