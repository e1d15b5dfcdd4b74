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
    let m = judged(&cls, &data, &out);
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

/// `report --run RUN --truth DATA --out OUT --json`'s metrics.
fn judged(run: &std::path::Path, data: &std::path::Path, out: &std::path::Path) -> Value {
    let printed = ok(&[
        "report",
        "--run",
        s(run),
        "--truth",
        s(data),
        "--out",
        s(out),
        "--json",
        "-q",
    ]);
    serde_json::from_str(&printed).expect("--json prints metrics.json")
}

/// RELION's model file of a 2-class iteration, laid out as `relion_refine` 3.1 writes it
/// (`data_model_general`, then `data_model_classes`), the maps named by their path from where
/// RELION ran.
fn relion_model_star(iteration: usize, pi: [f64; 2], log_likelihood: f64) -> String {
    let mut t = format!(
        "\n# version 30001\n\ndata_model_general\n\n\
         _rlnReferenceDimensionality                        3\n\
         _rlnDataDimensionality                             2\n\
         _rlnOriginalImageSize                             16\n\
         _rlnCurrentResolution                      40.000000\n\
         _rlnPixelSize                              10.000000\n\
         _rlnNrClasses                                      2\n\
         _rlnLogLikelihood                       {log_likelihood:.6e}\n\
         _rlnAveragePmax                             0.900000\n \n\
         # version 30001\n\ndata_model_classes\n\nloop_ \n\
         _rlnReferenceImage #1 \n_rlnClassDistribution #2 \n_rlnAccuracyRotations #3 \n\
         _rlnAccuracyTranslationsAngst #4 \n_rlnEstimatedResolution #5 \n\
         _rlnOverallFourierCompleteness #6 \n"
    );
    for (k, p) in pi.iter().enumerate() {
        t += &format!(
            "Class3D/job012/run_it{iteration:03}_class{:03}.mrc     {p:.6}     3.000000     \
             2.000000    40.000000     1.000000 \n",
            k + 1
        );
    }
    t + " \n"
}

/// `report --run run_it001_model.star` judges a RELION 3D classification by the same code as
/// ours: the class maps found beside the model file (RELION names them by its own working
/// folder), π from `_rlnClassDistribution`, the classes from `run_it001_data.star` (here class 1
/// is the open state, and 3 particles are in the wrong class), the history from iteration 0's
/// files (every particle in class 1 there), the log-likelihood per particle.
#[test]
fn report_scores_a_relion_classification() {
    use mcg_formats::star::{self, StarOptions};

    let dir = tempfile::tempdir().unwrap();
    let star_path = tiny_set_of(dir.path(), "hsp90-discrete");
    let data = star_path.parent().unwrap().to_path_buf();
    let truth = mcg_dataset::folder::GroundTruth::load(&data, 10.0).unwrap();
    let rel = dir.path().join("relion");
    std::fs::create_dir_all(&rel).unwrap();
    let (closed, open) = (&truth.states[0], &truth.states[truth.states.len() - 1]);
    for (k, (_, map)) in [open, closed].iter().enumerate() {
        let name = format!("run_it001_class{:03}.mrc", k + 1);
        mcg_formats::mrc::write_volume(&rel.join(name), map).unwrap();
    }
    let mut set = star::read_particles(&star_path, &StarOptions::default()).unwrap();
    let n = set.particles.len();
    let true_class: Vec<u32> = set.particles.iter().map(|p| p.class.unwrap()).collect();
    // RELION's class 1 is the truth's class 2 (open), and the first 3 particles are wrong.
    for (i, p) in set.particles.iter_mut().enumerate() {
        let right = 3 - true_class[i];
        p.class = Some(if i < 3 { 3 - right } else { right });
    }
    star::write_particles(&rel.join("run_it001_data.star"), &set).unwrap();
    let in_class_1 = set.particles.iter().filter(|p| p.class == Some(1)).count();
    for p in &mut set.particles {
        p.class = Some(1);
    }
    star::write_particles(&rel.join("run_it000_data.star"), &set).unwrap();
    std::fs::write(
        rel.join("run_it000_model.star"),
        relion_model_star(0, [0.5, 0.5], 0.0),
    )
    .unwrap();
    let model = rel.join("run_it001_model.star");
    std::fs::write(&model, relion_model_star(1, [0.7, 0.3], -6400.0)).unwrap();

    let out = dir.path().join("relion-report");
    let m = judged(&model, &data, &out);
    let c = &m["classification"];
    let accuracy = c["accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - (1.0 - 3.0 / n as f64)).abs() < 1e-12,
        "{accuracy}"
    );
    let per_class = c["per_class"].as_array().unwrap();
    assert_eq!(per_class[0]["state"].as_str(), Some(open.0.as_str()));
    assert_eq!(per_class[1]["state"].as_str(), Some(closed.0.as_str()));
    assert_eq!(per_class[0]["map"], "run_it001_class001.mrc");
    for class in per_class {
        assert!(class["fsc"]["resolution_A"]["0.143"].is_null(), "{class}");
    }
    // The closed state's share is class 2's π.
    let closed_row = c["proportions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["state"] == closed.0.as_str())
        .unwrap();
    assert_eq!(closed_row["pi"].as_f64(), Some(0.3));
    let history = c["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["pi"][0].as_f64(), Some(0.5));
    let changed = history[1]["changed"].as_f64().unwrap();
    assert!(
        (changed - (n - in_class_1) as f64 / n as f64).abs() < 1e-12,
        "{changed}"
    );
    let ll = history[1]["log_likelihood"].as_f64().unwrap();
    assert!((ll + 6400.0 / n as f64).abs() < 1e-9, "{ll}");
    assert!(out.join("report.html").is_file());
    // Nothing is written beside RELION's files.
    assert_eq!(std::fs::read_dir(&rel).unwrap().count(), 6);
}
