//! `multicryogan reconstruct`: the pose-free consensus, the classification with the poses
//! marginalised and the landscape from the classes, in one command.

use std::path::Path;

use crate::{fails, ok, s};

/// A two-state Hsp90 set (25 % closed, 75 % open) of 800 images of 16² at 10 Å and 20 dB in
/// DIR/data.
fn small_set(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("data");
    ok(&[
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        "800",
        "--box",
        "16",
        "--apix",
        "10",
        "--snr-db",
        "20",
        "--no-h5",
        "--seed",
        "5",
        "--out",
        s(&out),
        "-q",
    ]);
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

/// Every stage runs in its own folder and is recorded; the landscape starts from the
/// classification with its π held; a finished reconstruction resumed adds nothing; a second
/// one into the same folder is refused.
#[test]
fn reconstruct_runs_each_stage_in_its_folder_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_set(dir.path());
    let star = data.join("particles.star");
    let out = dir.path().join("rec");
    let args = [
        "reconstruct",
        "--particles",
        s(&star),
        "--out",
        s(&out),
        "--truth",
        s(&data),
        "--minutes",
        "1",
        "--consensus-minutes",
        "0.25",
        "--device",
        "cpu",
        "--threads",
        "2",
        "-q",
    ];
    let printed = ok(&args);
    let record = json(&out.join("reconstruct.json"));
    let stages: Vec<&str> = record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["consensus", "classify", "landscape", "report"]);
    for st in record["stages"].as_array().unwrap() {
        assert_eq!(st["done"], true, "{st}");
        assert!(st["seconds"].as_f64().unwrap() > 0.0, "{st}");
    }
    assert_eq!(record["stages"][0]["poses"], "pose-free");
    assert_eq!(record["stages"][1]["poses"], "poses marginalised");
    assert_eq!(record["stages"][2]["poses"], "pose-free");
    // The consensus spent at most its minutes (plus one step).
    assert!(record["stages"][0]["seconds"].as_f64().unwrap() < 0.25 * 60.0 + 10.0);
    // The classification started from the consensus's map.
    let model = json(&out.join("classify/model.json"));
    assert!(out.join("consensus/volumes/alpha_0.50.mrc").is_file());
    // The landscape: the mixture of two components at full resolution, π held at the
    // classification's, no warm start or blur.
    let config = json(&out.join("landscape/config.json"));
    let train = &config["train"];
    assert_eq!(train["model"]["generator"], "mixture");
    assert_eq!(train["model"]["components"], 2);
    assert_eq!(train["model"]["component_coarsening"], 1);
    assert_eq!(train["warm_steps"], 0);
    assert_eq!(train["blur_start_px"], 0.0);
    let fixed: Vec<f64> = serde_json::from_value(train["fixed_pi"].clone()).unwrap();
    let pi: Vec<f64> = serde_json::from_value(model["pi"].clone()).unwrap();
    let sum: f64 = pi.iter().map(|p| p.max(1e-3)).sum();
    for (f, p) in fixed.iter().zip(&pi) {
        assert!((f - p.max(1e-3) / sum).abs() < 1e-9, "{fixed:?} vs {pi:?}");
    }
    // The classes were put in one frame, the most probable class's.
    let frames = record["stages"][2]["outcome"]["class_frames"]
        .as_array()
        .unwrap();
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().any(|f| f["reference"] == true), "{frames:?}");
    // The reports, and the summary that names them.
    assert!(out.join("report/metrics.json").is_file());
    assert!(out.join("classify/report/metrics.json").is_file());
    assert!(
        printed.contains("classes (poses marginalised)"),
        "{printed}"
    );
    assert!(printed.contains("report/report.html"), "{printed}");
    assert_eq!(record["result"]["class_maps"][0], "classify/class_001.mrc");

    // Resumed once finished: nothing runs again.
    let before = std::fs::read(out.join("reconstruct.json")).unwrap();
    let landscape_ckpt = std::fs::read(out.join("landscape/checkpoint.safetensors")).unwrap();
    let mut resumed = args.to_vec();
    resumed.push("--resume");
    ok(&resumed);
    let after = json(&out.join("reconstruct.json"));
    let before: serde_json::Value = serde_json::from_slice(&before).unwrap();
    assert_eq!(before["stages"], after["stages"]);
    assert_eq!(
        landscape_ckpt,
        std::fs::read(out.join("landscape/checkpoint.safetensors")).unwrap()
    );
    // A fresh reconstruction into the same folder is refused, naming --resume.
    let err = fails(&args);
    assert!(err.contains("--resume"), "{err}");
}

/// The paper's pure path: the landscape alone, no classification.
#[test]
fn reconstruct_pose_free_trains_the_landscape_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_set(dir.path());
    let out = dir.path().join("rec");
    ok(&[
        "reconstruct",
        "--particles",
        s(&data.join("particles.star")),
        "--out",
        s(&out),
        "--pose-free",
        "--minutes",
        "0.1",
        "--device",
        "cpu",
        "--threads",
        "1",
        "-q",
    ]);
    let record = json(&out.join("reconstruct.json"));
    assert_eq!(record["stages"].as_array().unwrap().len(), 1);
    assert_eq!(record["stages"][0]["name"], "landscape");
    assert!(!out.join("classify").exists() && !out.join("consensus").exists());
    let train = &json(&out.join("landscape/config.json"))["train"];
    assert_eq!(train["fixed_pi"], serde_json::Value::Null);
    assert_eq!(train["model"]["mode"], "multi");
}

/// Bad settings are refused before anything is written, naming the flag.
#[test]
fn reconstruct_refuses_bad_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rec");
    let missing = dir.path().join("none.star");
    for (flag, value) in [
        ("--minutes", "0"),
        ("--consensus-minutes", "-1"),
        ("--classes", "0"),
    ] {
        let arg = format!("{flag}={value}");
        let err = fails(&[
            "reconstruct",
            "--particles",
            s(&missing),
            "--out",
            s(&out),
            &arg,
        ]);
        assert!(err.contains(flag), "{flag}: {err}");
        assert!(!out.exists(), "{flag}: wrote {}", out.display());
    }
    let err = fails(&[
        "reconstruct",
        "--particles",
        s(&missing),
        "--out",
        s(&out),
        "--resume",
    ]);
    assert!(err.contains("reconstruct.json"), "{err}");
}
