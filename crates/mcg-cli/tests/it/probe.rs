//! `multicryogan critic-probe`: the critic trained alone against G frozen at pairs of maps.

use crate::{fails, ok, s};

/// On a clean two-state set (800 images of 16² at 20 dB) the critic tells the states' pair from the mean alone (the mean
/// pair scores a larger Wasserstein estimate); probe.json holds every pair and the gap ratio.
#[test]
fn critic_probe_scores_the_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let data = crate::reconstruct::small_set(dir.path());
    let truth = data.join("ground_truth");
    let (a, b) = (truth.join("beta_00.mrc"), truth.join("beta_20.mrc"));
    let out = dir.path().join("probe");
    let printed = ok(&[
        "critic-probe",
        "--particles",
        s(&data.join("particles.star")),
        "--states",
        s(&a),
        s(&b),
        "--out",
        s(&out),
        "--steps",
        "100",
        "--random",
        "1",
        "--device",
        "cpu",
        "--threads",
        "2",
        "-q",
    ]);
    assert!(printed.contains("gap ratio"), "{printed}");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("probe.json")).unwrap()).unwrap();
    let pairs = doc["pairs"].as_array().unwrap();
    let names: Vec<&str> = pairs.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["truth", "half", "quarter", "random-1", "mean"]);
    let w = |name: &str| {
        pairs.iter().find(|p| p["name"] == name).unwrap()["wasserstein"]
            .as_f64()
            .unwrap()
    };
    for p in pairs {
        assert_eq!(p["estimates"].as_array().unwrap().len(), 100, "{p}");
        assert!(p["standard_error"].as_f64().unwrap().is_finite(), "{p}");
    }
    assert!(
        w("mean") > w("truth"),
        "mean {} against truth {}",
        w("mean"),
        w("truth")
    );
    assert!(doc["gap_ratio"].as_f64().unwrap().is_finite(), "{doc}");

    // Bad input: too few steps, or a state of another box, named by their flags.
    let other = dir.path().join("other");
    ok(&[
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        "4",
        "--box",
        "8",
        "--apix",
        "20",
        "--no-h5",
        "--out",
        s(&other),
        "-q",
    ]);
    let small = other.join("ground_truth").join("beta_00.mrc");
    let base = |states: [&str; 2], steps: &str| {
        fails(&[
            "critic-probe",
            "--particles",
            s(&data.join("particles.star")),
            "--states",
            states[0],
            states[1],
            "--out",
            s(&dir.path().join("bad")),
            "--steps",
            steps,
            "--device",
            "cpu",
        ])
    };
    let err = base([s(&a), s(&b)], "10");
    assert!(err.contains("--steps"), "{err}");
    let err = base([s(&a), s(&small)], "20");
    assert!(err.contains("--states") && err.contains("other"), "{err}");
}
