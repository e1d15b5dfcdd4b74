//! `multicryogan report` (and the whole chain: synth → train → sample → report).

use std::path::Path;

use serde_json::Value;

use crate::train::{SMALL, tiny_set_of};
use crate::{fails, ok, s};

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[1..4], b"PNG", "{}", path.display());
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn synth_train_report_writes_every_figure_and_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let star = tiny_set_of(dir.path(), "hsp90-discrete");
    let data = star.parent().unwrap().to_path_buf();
    let config = dir.path().join("small.json");
    std::fs::write(
        &config,
        SMALL.replace("\"seed\": 5", "\"seed\": 5, \"checkpoint_seconds\": 0.0"),
    )
    .unwrap();
    let run = dir.path().join("run");
    ok(&[
        "train",
        "--particles",
        s(&star),
        "--out",
        s(&run),
        "--steps",
        "3",
        "--config",
        s(&config),
        "--device",
        "cpu",
        "-q",
    ]);
    let out = dir.path().join("report");
    ok(&[
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
        "2",
        "--device",
        "cpu",
        "-q",
    ]);
    for figure in [
        "training_wasserstein.png",
        "training_losses.png",
        "images.png",
        "montage.png",
        "fsc_ends.png",
        "fsc_history.png",
        "fsccc.png",
    ] {
        let (w, h) = png_size(&out.join(figure));
        assert!(w >= 200 && h >= 60, "{figure}: {w}×{h}");
    }
    let m: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["training"]["steps"], 3);
    let p = &m["probabilities"];
    let total = p["alpha_0_fraction"].as_f64().unwrap()
        + p["alpha_1_fraction"].as_f64().unwrap()
        + p["transition"].as_f64().unwrap();
    assert!((total - 1.0).abs() < 1e-12, "{p}");
    assert_eq!(p["membership"].as_array().unwrap().len(), 4);
    // The truth of this set is 25/75 between its two states (up to the 64 particles' draw).
    let t0 = p["truth"]["alpha_0_state"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&t0));
    let fsccc = &m["fsccc"];
    assert_eq!(fsccc["reconstruction"].as_array().unwrap().len(), 5);
    assert_eq!(fsccc["truth"][0][0], 1.0);
    assert!(fsccc["mean_abs_difference"].as_f64().unwrap().is_finite());
    for end in ["alpha_0", "alpha_1"] {
        let f = &m["fsc_ends"][end];
        assert!(f["truth"].as_str().unwrap().starts_with("beta_"), "{f}");
        assert!(f["fsc"]["area"].as_f64().unwrap().is_finite());
    }
    assert_eq!(m["fsc_history"].as_array().unwrap().len(), 2);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert_eq!(
        html.matches("data:image/png;base64,").count(),
        7,
        "every figure embedded"
    );

    // Not a run folder: a clear error naming what is missing.
    let msg = fails(&["report", "--run", s(&data), "--out", s(&out)]);
    assert!(msg.contains("metrics.jsonl"), "{msg}");
}

#[test]
fn report_on_a_continuous_set_recovers_a_beta_curve_and_its_distance() {
    let dir = tempfile::tempdir().unwrap();
    let star = tiny_set_of(dir.path(), "hsp90-continuous");
    let data = star.parent().unwrap().to_path_buf();
    let config = dir.path().join("small.json");
    std::fs::write(&config, SMALL).unwrap();
    let run = dir.path().join("run");
    ok(&[
        "train",
        "--particles",
        s(&star),
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
