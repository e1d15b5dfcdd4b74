//! `multicryogan reconstruct`: the pose-free consensus, the classification with the poses
//! marginalised and the landscape from the classes, in one command.

use std::path::Path;

use crate::{fails, ok, s};

/// A two-state Hsp90 set (25 % closed, 75 % open) of 800 images of 16² at 10 Å and 20 dB in
/// DIR/data.
pub fn small_set(dir: &Path) -> std::path::PathBuf {
    small_set_of(dir, "hsp90-discrete", "800", "5")
}

/// `n` images of 16² at 10 Å and 20 dB of Hsp90 preset `preset` (data seed `seed`) in DIR/data.
fn small_set_of(dir: &Path, preset: &str, n: &str, seed: &str) -> std::path::PathBuf {
    let out = dir.join("data");
    ok(&[
        "synth",
        "--preset",
        preset,
        "--n",
        n,
        "--box",
        "16",
        "--apix",
        "10",
        "--snr-db",
        "20",
        "--no-h5",
        "--seed",
        seed,
        "--out",
        s(&out),
        "-q",
    ]);
    out
}

/// A one-minute reconstruction of `star` into `out` (a quarter of it for the consensus),
/// reported against `truth`, on two CPU threads.
fn one_minute<'a>(star: &'a Path, out: &'a Path, truth: &'a Path) -> [&'a str; 16] {
    [
        "reconstruct",
        "--particles",
        s(star),
        "--out",
        s(out),
        "--truth",
        s(truth),
        "--minutes",
        "1",
        "--consensus-minutes",
        "0.25",
        "--device",
        "cpu",
        "--threads",
        "2",
        "-q",
    ]
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
    let args = one_minute(&star, &out, &data);
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

/// SIGTERM (what `timeout` and schedulers send) in the middle of a stage after the consensus:
/// the command stops with status 130, leaves no temporary file, and its record is whole, with
/// the consensus done and the stage under way recorded as not done; `--resume` continues from
/// there and finishes every stage.
#[test]
fn reconstruct_terminated_mid_stage_resumes_to_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_set(dir.path());
    let star = data.join("particles.star");
    let out = dir.path().join("rec");
    let args = one_minute(&star, &out, &data);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_multicryogan"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The classification has begun once its folder exists.
    let start = std::time::Instant::now();
    while !out.join("classify").exists() && start.elapsed() < std::time::Duration::from_secs(300) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the reconstruction ended ({status}) before it was terminated");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("--resume"), "{stderr}");
    assert_eq!(
        crate::recovery::temporaries(&out),
        Vec::<std::path::PathBuf>::new()
    );
    let record = json(&out.join("reconstruct.json"));
    let stages = record["stages"].as_array().unwrap();
    assert_eq!(stages[0]["name"], "consensus");
    assert_eq!(stages[0]["done"], true);
    let stopped = stages.last().unwrap().clone();
    assert_ne!(stopped["name"], "consensus", "{record}");
    assert_eq!(stopped["done"], false, "{record}");

    let mut resumed = args.to_vec();
    resumed.push("--resume");
    ok(&resumed);
    let record = json(&out.join("reconstruct.json"));
    let names: Vec<&str> = record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["consensus", "classify", "landscape", "report"]);
    for st in record["stages"].as_array().unwrap() {
        assert_eq!(st["done"], true, "{st}");
    }
    // The interrupted stage's time goes on from what it had spent.
    let again = record["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|st| st["name"] == stopped["name"])
        .unwrap();
    assert!(
        again["seconds"].as_f64().unwrap() >= stopped["seconds"].as_f64().unwrap(),
        "{again} {stopped}"
    );
    assert!(out.join("classify/report/metrics.json").is_file());
    assert_eq!(
        crate::recovery::temporaries(&out),
        Vec::<std::path::PathBuf>::new()
    );
}

/// With its budgets in steps, a reconstruction repeats bit for bit: the same seed and settings
/// give the same consensus, classes, π and landscape (its scores and the step kept too); the
/// GAN stages stop at their steps (the landscape perhaps earlier, by its likelihood).
#[test]
fn reconstruct_with_step_budgets_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_set(dir.path());
    let star = data.join("particles.star");
    let run = |name: &str| {
        let out = dir.path().join(name);
        ok(&[
            "reconstruct",
            "--particles",
            s(&star),
            "--out",
            s(&out),
            "--consensus-steps",
            "450",
            "--landscape-steps",
            "40",
            "--device",
            "cpu",
            "--threads",
            "2",
            "-q",
        ]);
        out
    };
    let (a, b) = (run("a"), run("b"));
    for file in [
        "consensus/volumes/alpha_0.50.mrc",
        "classify/class_001.mrc",
        "classify/class_002.mrc",
        "classify/particles.star",
        "landscape/volumes/alpha_0.00.mrc",
        "landscape/volumes/alpha_1.00.mrc",
    ] {
        let (x, y) = (std::fs::read(a.join(file)), std::fs::read(b.join(file)));
        assert!(
            x.unwrap() == y.unwrap(),
            "{file} differs between the two runs"
        );
    }
    let (ra, rb) = (
        json(&a.join("reconstruct.json")),
        json(&b.join("reconstruct.json")),
    );
    assert_eq!(ra["result"]["pi"], rb["result"]["pi"]);
    let consensus = &ra["stages"][0]["outcome"];
    // Chunks of 200, 200 and 50 steps: the last chunk ends at the budget, whether or not its
    // FSC against the previous chunk stopped rising.
    assert_eq!(consensus["steps"], 450, "{consensus}");
    let stopped = consensus["stopped"].as_str().unwrap();
    assert!(
        stopped.contains("steps were spent") || stopped.contains("stopped rising"),
        "{consensus}"
    );
    // The landscape ends at its steps, or earlier by the likelihood rule, the same way twice.
    let (la, lb) = (&ra["stages"][2]["outcome"], &rb["stages"][2]["outcome"]);
    assert!(
        la["steps"] == 40 || la["stopped"] == "the likelihood stopped rising",
        "{la}"
    );
    for key in ["steps", "scores", "kept_step", "stopped"] {
        assert_eq!(la[key], lb[key], "{key}");
    }
}

/// The landscape trains in chunks (one step, then a quarter of its steps), each scored by the
/// likelihood of the particles with their poses marginalised; it stops once two chunks in a
/// row have not raised the best score by 0.01 nats per image, and its folder ends at the
/// best-scored checkpoint. With `--landscape-stop budget` it trains for all its steps, and still ends at
/// its best checkpoint.
#[test]
fn reconstruct_keeps_the_landscape_of_highest_likelihood() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_set(dir.path());
    let star = data.join("particles.star");
    let run = |name: &str, stop: &str| {
        let out = dir.path().join(name);
        ok(&[
            "reconstruct",
            "--particles",
            s(&star),
            "--out",
            s(&out),
            "--consensus-steps",
            "200",
            "--landscape-steps",
            "40",
            "--landscape-stop",
            stop,
            "--device",
            "cpu",
            "--threads",
            "2",
            "-q",
        ]);
        out
    };
    for (name, stop) in [("rule", "likelihood"), ("all", "budget")] {
        let out = run(name, stop);
        let outcome = json(&out.join("reconstruct.json"))["stages"][2]["outcome"].clone();
        assert_eq!(outcome["stop"], stop, "{outcome}");
        let scores: Vec<(u64, f64)> = serde_json::from_value(outcome["scores"].clone()).unwrap();
        let steps: Vec<u64> = scores.iter().map(|s| s.0).collect();
        assert_eq!(steps[0], 1, "{outcome}");
        assert!(scores.iter().all(|s| s.1.is_finite()), "{outcome}");
        // The best: the first score, replaced only by one higher by more than 0.01.
        let mut kept = scores[0];
        for &(st, ll) in &scores[1..] {
            if ll > kept.1 + 0.01 {
                kept = (st, ll);
            }
        }
        assert_eq!(outcome["kept_step"], kept.0, "{outcome}");
        let after = steps.iter().filter(|&&st| st > kept.0).count();
        if stop == "budget" {
            assert_eq!(steps, [1, 11, 21, 31, 40], "{outcome}");
        } else if outcome["stopped"] == "the likelihood stopped rising" {
            assert_eq!(after, 2, "{outcome}");
            assert!(*steps.last().unwrap() < 40, "{outcome}");
        } else {
            assert_eq!(*steps.last().unwrap(), 40, "{outcome}");
            assert!(after < 2, "{outcome}");
        }
        // The folder is the kept step's: its maps are that checkpoint's snapshot.
        let snapshot = out.join(format!("landscape/volumes/step_{:07}", kept.0));
        for map in ["alpha_0.00.mrc", "alpha_1.00.mrc"] {
            assert!(
                std::fs::read(out.join("landscape/volumes").join(map)).unwrap()
                    == std::fs::read(snapshot.join(map)).unwrap(),
                "{name}: {map} is not step {}'s",
                kept.0
            );
        }
    }
}

/// A continuum: the landscape is the path through the classes, in the order of their
/// similarity, each covering its share π of the segment; the record keeps the kind, and a
/// resume that asks for the other kind is refused.
#[test]
fn reconstruct_continuous_runs_a_path_through_the_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = small_set_of(dir.path(), "hsp90-continuous", "600", "6");
    let out = dir.path().join("rec");
    let star = data.join("particles.star");
    let mut args = vec![
        "reconstruct",
        "--particles",
        s(&star),
        "--out",
        s(&out),
        "--landscape",
        "continuous",
        "--consensus-steps",
        "200",
        "--landscape-steps",
        "10",
        "--device",
        "cpu",
        "--threads",
        "2",
        "-q",
    ];
    ok(&args);
    let record = json(&out.join("reconstruct.json"));
    assert_eq!(record["landscape"], "continuous");
    let train = &json(&out.join("landscape/config.json"))["train"];
    assert_eq!(train["model"]["generator"], "path");
    // A continuum takes four classes unless --classes says otherwise. The classes in path
    // order, those that emptied left out: with them a permutation of 1, 2, 3, 4; the order
    // starts at its lower end, and the path's shares are the classes' π in
    // that order.
    let outcome = &record["stages"][2]["outcome"];
    let order: Vec<usize> = serde_json::from_value(outcome["classes_in_order"].clone()).unwrap();
    let empty: Vec<usize> =
        serde_json::from_value(outcome["empty_classes_left_out"].clone()).unwrap();
    assert!(order.len() >= 2, "{outcome}");
    assert_eq!(train["model"]["components"], order.len());
    let mut all: Vec<usize> = order.iter().chain(&empty).copied().collect();
    all.sort_unstable();
    assert_eq!(all, [1, 2, 3, 4], "{outcome}");
    assert!(order[0] < order[order.len() - 1], "{order:?}");
    let pi: Vec<f64> =
        serde_json::from_value(json(&out.join("classify/model.json"))["pi"].clone()).unwrap();
    let fixed: Vec<f64> = serde_json::from_value(train["fixed_pi"].clone()).unwrap();
    let sum: f64 = order.iter().map(|&k| pi[k - 1].max(1e-3)).sum();
    for (f, &k) in fixed.iter().zip(&order) {
        assert!(
            (f - pi[k - 1].max(1e-3) / sum).abs() < 1e-9,
            "{fixed:?} {pi:?} {order:?}"
        );
    }
    // A resume must keep the kind.
    args[6] = "discrete";
    args.push("--resume");
    let err = fails(&args);
    assert!(err.contains("continuous landscape"), "{err}");
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
        ("--consensus-steps", "0"),
        ("--landscape-steps", "0"),
        ("--landscape", "smooth"),
        ("--landscape-stop", "never"),
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
    // More classes than the particles fill (100 each) are refused before the consensus.
    let data = small_set_of(dir.path(), "hsp90-discrete", "300", "1");
    let err = fails(&[
        "reconstruct",
        "--particles",
        s(&data.join("particles.star")),
        "--out",
        s(&out),
        "--classes",
        "4",
    ]);
    assert!(err.contains("--classes") && err.contains("400"), "{err}");
    assert!(!out.exists(), "wrote {}", out.display());
}
