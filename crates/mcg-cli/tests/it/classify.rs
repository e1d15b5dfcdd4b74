//! `multicryogan classify`: 3D classification with the poses marginalised.

use std::path::{Path, PathBuf};

use mcg_formats::mrc::{self, MrcKind};
use mcg_formats::star::{StarOptions, read_particles};
use mcg_physics::Volume;
use mcg_physics::rng::{Purpose, stream};
use rand_distr::{Distribution, StandardNormal};

use crate::{fails, ok, s};

/// A two-state Hsp90 set (25 % closed, 75 % open) of `n` images of 16² at 10 Å and `snr_db`,
/// in DIR/data; returns its STAR file and the reference: the states' mean, weighted by their
/// shares (the consensus a pose-free reconstruction aims at).
fn two_state_set(dir: &Path, n: usize, snr_db: &str) -> (PathBuf, PathBuf) {
    let out = dir.join("data");
    let n = n.to_string();
    ok(&[
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        &n,
        "--box",
        "16",
        "--apix",
        "10",
        "--snr-db",
        snr_db,
        "--no-h5",
        "--seed",
        "3",
        "--out",
        s(&out),
        "-q",
    ]);
    let closed = mrc::read_volume(&out.join("ground_truth/beta_00.mrc"), None).unwrap();
    let open = mrc::read_volume(&out.join("ground_truth/beta_20.mrc"), None).unwrap();
    let mean = closed.data() * 0.25 + open.data() * 0.75;
    let reference = dir.join("reference.mrc");
    mrc::write_volume(&reference, &Volume::new(mean, closed.apix()).unwrap()).unwrap();
    (out.join("particles.star"), reference)
}

fn classes(star: &Path) -> Vec<u32> {
    read_particles(star, &StarOptions::default())
        .unwrap()
        .particles
        .iter()
        .map(|p| p.class.expect("a class"))
        .collect()
}

/// The share of particles whose class matches the truth, under the better of the two
/// labellings.
fn accuracy(truth: &[u32], got: &[u32]) -> f64 {
    let same = truth.iter().zip(got).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64;
    same.max(1.0 - same)
}

fn classify(star: &Path, reference: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "classify",
        "--particles",
        s(star),
        "--reference",
        s(reference),
        "--classes",
        "2",
        "--out",
        s(out),
        "--initial-resolution",
        "0.5",
        "--device",
        "cpu",
        "--threads",
        "1",
        "-q",
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"--angular-step") {
        args.extend(["--angular-step", "15"]);
    }
    ok(&args)
}

fn model(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("model.json")).unwrap()).unwrap()
}

/// At high SNR the two states are told apart: > 99 % of particles in their true class and
/// π within 3 points of 25 / 75; the run stops once it has converged (and a resumed converged
/// run adds nothing); the outputs are there and RELION's columns are written.
#[test]
fn classify_splits_a_two_state_set_at_high_snr() {
    let dir = tempfile::tempdir().unwrap();
    let (star, reference) = two_state_set(dir.path(), 1200, "20");
    let out = dir.path().join("cls");
    let args = ["--iterations", "20", "--angular-step", "10"];
    classify(&star, &reference, &out, &args);
    let acc = accuracy(&classes(&star), &classes(&out.join("particles.star")));
    assert!(acc > 0.99, "accuracy {acc}");
    let m = model(&out);
    let mut pi: Vec<f64> = m["pi"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    pi.sort_by(f64::total_cmp);
    assert!((pi[0] - 0.25).abs() < 0.03, "π {pi:?}");
    let history = m["history"].as_array().unwrap();
    let stop = m["converged_at"].as_u64().expect("a converged run") as usize;
    assert!(stop < 20, "converged after {stop} iterations");
    assert_eq!(history.len(), stop + 1);
    assert!(history[stop]["changed"].as_f64().unwrap() < 0.002);
    classify(
        &star,
        &reference,
        &out,
        &[&args[..], &["--resume"]].concat(),
    );
    assert_eq!(model(&out)["history"], m["history"]);
    // Each class map against its state (the reference is in the states' frame): detail
    // well beyond the starting limit (half of Nyquist) is recovered.
    let truth = |b: &str| {
        mrc::read_volume(
            &dir.path().join(format!("data/ground_truth/beta_{b}.mrc")),
            None,
        )
        .unwrap()
    };
    let states = [truth("00"), truth("20")];
    for k in 1..=2 {
        let map = mrc::read_volume(&out.join(format!("class_00{k}.mrc")), None).unwrap();
        assert_eq!(map.box_size(), 16);
        let best = states
            .iter()
            .map(|state| {
                let curve = mcg_eval::fsc::fsc(&map, state, &Default::default()).unwrap();
                curve.resolution(0.5).map_or(1.0, |r| r.nyquist_fraction)
            })
            .fold(0.0, f64::max);
        assert!(best >= 0.8, "class {k}: FSC 0.5 at {best:.3} of Nyquist");
    }
    let text = std::fs::read_to_string(out.join("particles.star")).unwrap();
    for label in [
        "_rlnClassNumber",
        "_rlnMaxValueProbDistribution",
        "_rlnLogLikeliContribution",
        "_rlnAngleRot",
        "_rlnOriginXAngst",
    ] {
        assert!(text.contains(label), "particles.star lacks {label}");
    }
}

/// Pure-noise images give no confident split: the classes' probabilities stay near even,
/// and two starts (other seeds, so other half sets and other starting groups) put the
/// particles in classes that agree little. Not at the level of coin flips: both runs fit the
/// same noise, so the data steer both starts alike (four seeds' pairs agreed on 0.52–0.62 of
/// the particles); a confident split is reproduced (> 0.99 on the 20 dB set).
#[test]
fn pure_noise_makes_no_confident_split() {
    let dir = tempfile::tempdir().unwrap();
    let (star, reference) = two_state_set(dir.path(), 1200, "10");
    let stack = star.parent().unwrap().join("particles.mrcs");
    let images = mrc::read(&stack).unwrap();
    let shape = images.data.dim();
    let mut rng = stream(9, Purpose::Other(93), 0);
    let noise = ndarray::Array3::from_shape_fn(shape, |_| {
        <StandardNormal as Distribution<f64>>::sample(&StandardNormal, &mut rng) as f32
    });
    mrc::write_array(&stack, noise.view(), 10.0, MrcKind::Stack).unwrap();
    let runs: Vec<PathBuf> = ["1", "2"]
        .iter()
        .map(|seed| {
            let out = dir.path().join(format!("cls{seed}"));
            classify(
                &star,
                &reference,
                &out,
                &["--iterations", "3", "--noise-sigma", "1", "--seed", seed],
            );
            out
        })
        .collect();
    for out in &runs {
        let pi = model(out)["pi"][0].as_f64().unwrap();
        assert!((pi - 0.5).abs() < 0.15, "π {pi} on pure noise");
    }
    let agreement = accuracy(
        &classes(&runs[0].join("particles.star")),
        &classes(&runs[1].join("particles.star")),
    );
    assert!(
        agreement < 0.7,
        "two starts on noise agree on {agreement} of the particles"
    );
}

/// Interrupted after two iterations and resumed, a run ends where an uninterrupted one does,
/// bit for bit: the same class maps, π and classes. So does a run stopped by its minutes
/// (after its first iteration, which always runs: another would not fit in 0.001 minute),
/// and model.json says where it stopped.
#[test]
fn a_resumed_classification_matches_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let (star, reference) = two_state_set(dir.path(), 600, "0");
    let straight = dir.path().join("straight");
    classify(&star, &reference, &straight, &["--iterations", "3"]);
    assert_eq!(model(&straight)["out_of_time_at"], serde_json::Value::Null);
    let split = dir.path().join("split");
    classify(&star, &reference, &split, &["--iterations", "2"]);
    assert_eq!(model(&split)["history"].as_array().unwrap().len(), 3);
    let timed = dir.path().join("timed");
    classify(
        &star,
        &reference,
        &timed,
        &["--iterations", "3", "--minutes", "0.001"],
    );
    assert_eq!(model(&timed)["history"].as_array().unwrap().len(), 2);
    assert_eq!(model(&timed)["out_of_time_at"], 1);
    for out in [&split, &timed] {
        classify(&star, &reference, out, &["--iterations", "3", "--resume"]);
        for k in 1..=2 {
            let name = format!("class_00{k}.mrc");
            assert_eq!(
                std::fs::read(straight.join(&name)).unwrap(),
                std::fs::read(out.join(&name)).unwrap(),
                "{name} differs"
            );
        }
        assert_eq!(model(&straight)["pi"], model(out)["pi"]);
        assert_eq!(model(out)["out_of_time_at"], serde_json::Value::Null);
        assert_eq!(
            classes(&straight.join("particles.star")),
            classes(&out.join("particles.star"))
        );
    }
}

/// A reference off the particles' centre (as a pose-free consensus may be) is moved back
/// before the classes start: the shift of highest likelihood undoes the offset, to the
/// search's finest step (a quarter voxel at 16³), and model.json records it.
#[test]
fn an_off_centre_reference_is_moved_onto_the_particles() {
    let dir = tempfile::tempdir().unwrap();
    let (star, reference) = two_state_set(dir.path(), 400, "10");
    let map = mrc::read_volume(&reference, None).unwrap();
    let d = [1.5, -1.0, 0.5];
    let moved = mcg_eval::align::Transform {
        shift_voxels: d,
        ..mcg_eval::align::Transform::identity()
    }
    .apply(&map);
    let off = dir.path().join("off_centre.mrc");
    mrc::write_volume(&off, &moved).unwrap();
    let out = dir.path().join("cls");
    classify(&star, &off, &out, &["--iterations", "0"]);
    let found: Vec<f64> = model(&out)["recentred_voxels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    for i in 0..3 {
        assert!(
            (found[i] + d[i]).abs() < 0.3,
            "moved by {found:?}, the reference was off by {d:?}"
        );
    }
}

/// Bad input is refused before anything is written, naming the file or option.
#[test]
fn classify_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (star, reference) = two_state_set(dir.path(), 300, "0");
    let base = |out: &Path, reference: &Path, classes: &str| {
        vec![
            "classify".to_string(),
            "--particles".into(),
            s(&star).into(),
            "--reference".into(),
            s(reference).into(),
            "--classes".into(),
            classes.into(),
            "--out".into(),
            s(out).into(),
            "--device".into(),
            "cpu".into(),
        ]
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        fails(&refs)
    };
    let out = dir.path().join("out");

    // A reference of another box.
    let big = dir.path().join("big.mrc");
    mrc::write_volume(&big, &Volume::zeros(24, 10.0).unwrap()).unwrap();
    let msg = run(base(&out, &big, "2"));
    assert!(
        msg.contains("big.mrc") && msg.contains("24") && msg.contains("16"),
        "{msg}"
    );
    // Of another pixel size.
    let coarse = dir.path().join("coarse.mrc");
    mrc::write_volume(&coarse, &Volume::zeros(16, 12.0).unwrap()).unwrap();
    let msg = run(base(&out, &coarse, "2"));
    assert!(msg.contains("coarse.mrc") && msg.contains("12"), "{msg}");
    // No classes, and more than 300 particles can fill.
    let msg = run(base(&out, &reference, "0"));
    assert!(msg.contains("--classes"), "{msg}");
    let msg = run(base(&out, &reference, "4"));
    assert!(msg.contains("--classes") && msg.contains("300"), "{msg}");
    assert!(!out.exists(), "nothing is written on bad input");
    // An output onto the input: the particles' own folder.
    let data = star.parent().unwrap().to_path_buf();
    let before = std::fs::read(&star).unwrap();
    let msg = run(base(&data, &reference, "2"));
    assert!(
        msg.contains("particles.star") && msg.contains("overwrite"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&star).unwrap(), before);
    // A flag out of range.
    let mut args = base(&out, &reference, "2");
    args.extend(["--angular-step".into(), "0".into()]);
    let msg = run(args);
    assert!(msg.contains("--angular-step"), "{msg}");
}

/// Maps scored against the particles by the likelihood with the poses marginalised
/// (`mcg_classify::score`, the reconstruction's judge of its landscape): the true states in
/// their proportions score above their mean and above the same states in swapped
/// proportions; a mixture of a map with itself scores as the map alone; a map's scale is
/// fitted away; a map of another box is refused.
#[test]
fn the_likelihood_score_prefers_the_true_states() {
    use mcg_classify::score::Scorer;
    let dir = tempfile::tempdir().unwrap();
    let (star, reference) = two_state_set(dir.path(), 400, "10");
    let truth = star.parent().unwrap().join("ground_truth");
    let read = |p: &Path| mrc::read_volume(p, None).unwrap();
    let (closed, open, mean) = (
        read(&truth.join("beta_00.mrc")),
        read(&truth.join("beta_20.mrc")),
        read(&reference),
    );
    let scorer = Scorer::new(&score_settings(&star), 7.0, 300).unwrap();
    assert_eq!(scorer.images(), 300);
    let pair = [closed.clone(), open.clone()];
    let true_pair = scorer.score(&pair, &[0.25, 0.75]).unwrap();
    let swapped = scorer.score(&pair, &[0.75, 0.25]).unwrap();
    let alone = scorer.score(std::slice::from_ref(&mean), &[1.0]).unwrap();
    assert!(true_pair > alone + 1.0, "true {true_pair}, mean {alone}");
    assert!(
        true_pair > swapped + 0.1,
        "true {true_pair}, swapped {swapped}"
    );
    let twice = scorer
        .score(&[mean.clone(), mean.clone()], &[1.0, 3.0])
        .unwrap();
    assert!((twice - alone).abs() < 1e-9, "{twice} vs {alone}");
    let (ll1, c1) = scorer.per_image(&mean).unwrap();
    let tripled = Volume::new(mean.data() * 3.0, mean.apix()).unwrap();
    let (ll3, c3) = scorer.per_image(&tripled).unwrap();
    // The poses that fit the scale come from a first E-step at the given scale, so they may
    // differ by a few images.
    assert!((3.0 * c3 / c1 - 1.0).abs() < 1e-2, "scales {c1} and {c3}");
    let mean_of = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        (mean_of(&ll1) - mean_of(&ll3)).abs() < 1e-2,
        "{} vs {}",
        mean_of(&ll1),
        mean_of(&ll3)
    );
    let small = Volume::new(ndarray::Array3::zeros((8, 8, 8)), mean.apix()).unwrap();
    let err = scorer.per_image(&small).unwrap_err().to_string();
    assert!(err.contains("8³") && err.contains("16³"), "{err}");
}

/// The classification's settings with which the tests score maps: 15° rotations, on the CPU.
fn score_settings(star: &Path) -> mcg_classify::ClassifySettings {
    mcg_classify::ClassifySettings {
        particles: star.to_path_buf(),
        angular_step_deg: 15.0,
        device: mcg_train::DeviceChoice::Cpu,
        ..Default::default()
    }
}

/// The particles give the rotation between two frames of a map
/// (`Scorer::most_probable_rotations`, `mcg_reconstruct::data_rotation`): the open state turned
/// by a known rotation `G` is brought back by `Gᵀ`, found as the mode of the images' rotations
/// under the two maps, and `common_frame` with the particles moves it back onto the open state.
#[test]
fn the_particles_give_the_rotation_between_two_frames() {
    use mcg_classify::score::Scorer;
    use mcg_eval::align::{Transform, angle_between, correlation};
    use mcg_physics::pose::{Pose, transpose};
    let dir = tempfile::tempdir().unwrap();
    let (star, _) = two_state_set(dir.path(), 400, "10");
    let truth = star.parent().unwrap().join("ground_truth");
    let open = mrc::read_volume(&truth.join("beta_20.mrc"), None).unwrap();
    let g = Pose::new(50.0, 120.0, -30.0).matrix();
    let turned = Transform {
        rotation: g,
        ..Transform::identity()
    }
    .apply(&open);
    let scorer = Scorer::new(&score_settings(&star), 7.0, 300).unwrap();
    let under_open = scorer.most_probable_rotations(&open).unwrap();
    let under_turned = scorer.most_probable_rotations(&turned).unwrap();
    assert_eq!(under_open.len(), 300);
    let (r, support) = mcg_reconstruct::data_rotation(&under_open, &under_turned).unwrap();
    let off = angle_between(&r, &transpose(&g));
    assert!(off < 10.0, "{off}° from the turn back, support {support}");
    assert!(support > 0.3, "support {support}");
    assert!(mcg_reconstruct::data_rotation(&[], &[]).is_none());
    let before = correlation(&turned, &open);
    let (maps, frames) = mcg_reconstruct::common_frame(
        vec![turned, open.clone()],
        &[0.3, 0.7],
        &[1, 2],
        Some(&scorer),
    )
    .unwrap();
    let after = correlation(&maps[0], &open);
    assert!(
        after > 0.95 && before < 0.8,
        "correlation {before} → {after}"
    );
    assert_eq!(frames[0]["moved"], true);
    assert!(
        frames[0]["data"]["support"].as_f64().unwrap() > 0.3,
        "{}",
        frames[0]
    );
}
