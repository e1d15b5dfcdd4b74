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
