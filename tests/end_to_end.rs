//! The whole product through its command line, as a newcomer meets it: `synth` makes a tiny
//! Hsp90 discrete set, `train` runs a few dozen Multi-CryoGAN steps on the CPU, `sample` writes
//! the landscape and `report` scores it against the ground truth. Every file the chain writes is
//! then opened with the reader its format calls for, so an output that exists but does not parse
//! fails here, and so does a new kind of output that nobody taught this test to read.
//!
//! Built as a test of the `mcg-cli` package (its `Cargo.toml` points here), which gives it the
//! `multicryogan` binary that `cargo test` has just built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mcg_testdata::cli::{self, png_size, s};
use serde_json::Value;

/// Runs `multicryogan ARGS` and fails the test, with its stderr, unless it succeeds.
fn ok(args: &[&str]) -> String {
    cli::ok(env!("CARGO_BIN_EXE_multicryogan"), args)
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every file under `dir`, recursively, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Opens `path` with the reader of its format and checks what it holds is usable; panics on a
/// file of a kind this test does not know. Returns the kind, for the tally.
fn check_file(path: &Path, particles: usize) -> &'static str {
    let name = path.display();
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "json" => {
            let v = json(path);
            assert!(v.is_object(), "{name}: a JSON object expected");
            "json"
        }
        "jsonl" => {
            let text = std::fs::read_to_string(path).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert!(!lines.is_empty(), "{name} is empty");
            for (i, line) in lines.iter().enumerate() {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("{name} line {}: {e}", i + 1));
            }
            "jsonl"
        }
        "mrc" | "mrcs" => {
            let map = mcg_formats::mrc::read(path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!map.data.is_empty(), "{name} holds no voxels");
            assert!(
                map.data.iter().all(|v| v.is_finite()),
                "{name}: non-finite values"
            );
            assert!(
                map.data.iter().any(|&v| v != 0.0),
                "{name}: every value is zero"
            );
            if ext == "mrcs" {
                assert_eq!(
                    map.data.shape()[0],
                    particles,
                    "{name}: images in the stack"
                );
            }
            "mrc"
        }
        "star" => {
            let set = mcg_formats::star::read_particles(path, &Default::default())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(set.particles.len(), particles, "{name}: particles");
            "star"
        }
        "h5" => {
            let h5 = mcg_h5::H5Particles::open(path).unwrap_or_else(|e| panic!("{name}: {e}"));
            let set = h5.particle_set().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(set.particles.len(), particles, "{name}: particles");
            assert!(
                !h5.ground_truth_volumes().unwrap().is_empty(),
                "{name}: no ground truth inside"
            );
            "h5"
        }
        "png" => {
            let decoder =
                png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
            let mut reader = decoder
                .read_info()
                .unwrap_or_else(|e| panic!("{name} is not a PNG: {e}"));
            let mut buf = vec![0; reader.output_buffer_size().expect("a sane PNG size")];
            let frame = reader
                .next_frame(&mut buf)
                .unwrap_or_else(|e| panic!("{name}: the image does not decode: {e}"));
            assert!(frame.width >= 32 && frame.height >= 32, "{name}: {frame:?}");
            "png"
        }
        "html" => {
            let html = std::fs::read_to_string(path).unwrap();
            assert!(html.starts_with("<!DOCTYPE html>"), "{name}: no doctype");
            assert!(html.trim_end().ends_with("</html>"), "{name}: cut short");
            let figures = files_under(path.parent().unwrap())
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "png"))
                .count();
            assert_eq!(
                html.matches("data:image/png;base64,").count(),
                figures,
                "{name}: every figure beside it embedded"
            );
            "html"
        }
        "safetensors" => {
            let tensors =
                tch::Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(tensors.len() > 10, "{name}: {} tensors", tensors.len());
            "safetensors"
        }
        "cxc" => {
            let script = std::fs::read_to_string(path).unwrap();
            let opened: Vec<&str> = script
                .lines()
                .filter_map(|l| l.strip_prefix("open "))
                .collect();
            assert!(!opened.is_empty(), "{name} opens nothing");
            let beside = files_under(path.parent().unwrap());
            for target in opened {
                // A file name, or a pattern with one `*` (a volume series).
                let pattern = target.split_whitespace().next().unwrap();
                let (head, tail) = pattern.split_once('*').unwrap_or((pattern, ""));
                let matches = beside.iter().any(|p| {
                    let f = p.file_name().unwrap().to_string_lossy();
                    f.starts_with(head) && f.ends_with(tail) && f.len() >= pattern.len() - 1
                });
                assert!(
                    matches,
                    "{name} opens {pattern}, which matches nothing beside it"
                );
            }
            "cxc"
        }
        other => panic!("{name}: this test has no check for a .{other} file; add one"),
    }
}

#[test]
fn synth_train_sample_report_through_the_cli() {
    const N: usize = 256;
    const STEPS: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let (data, run, samples, report) = (
        dir.path().join("data"),
        dir.path().join("run"),
        dir.path().join("samples"),
        dir.path().join("report"),
    );

    ok(&[
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        &N.to_string(),
        "--box",
        "16",
        "--apix",
        "10",
        "--calibration-images",
        "64",
        "--seed",
        "3",
        "--out",
        s(&data),
        "-q",
    ]);

    // The default recipe (mixture generator, fast step, warm start, blur) small enough for
    // seconds on two cores, checkpointed at every step so that the report's history has
    // snapshots whatever the machine's speed (the fast step can finish 40 steps within a
    // second).
    let config = dir.path().join("small.json");
    std::fs::write(
        &config,
        r#"{
  "model": { "mode": "multi", "box_size": 16, "discriminator_channels": 4, "pack": 4 },
  "batch_size": 8, "poses_per_volume": 4, "d_steps": 2, "seed": 5,
  "warm_steps": 10, "blur_start_px": 1.5, "blur_steps": 20,
  "checkpoint_seconds": 0.0, "log_every": 10
}"#,
    )
    .unwrap();
    ok(&[
        "train",
        "--particles",
        s(&data.join("particles.star")),
        "--out",
        s(&run),
        "--steps",
        &STEPS.to_string(),
        "--config",
        s(&config),
        "--device",
        "cpu",
        "-q",
    ]);
    ok(&[
        "sample",
        "--run",
        s(&run),
        "--n",
        "5",
        "--out",
        s(&samples),
        "--device",
        "cpu",
        "-q",
    ]);
    ok(&[
        "report",
        "--run",
        s(&run),
        "--truth",
        s(&data),
        "--out",
        s(&report),
        "--l",
        "4",
        "--history",
        "2",
        "--device",
        "cpu",
        "-q",
    ]);

    // Every file of every stage opens and holds what it should.
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for stage in [&data, &run, &samples, &report] {
        let files = files_under(stage);
        assert!(!files.is_empty(), "{} is empty", stage.display());
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy();
            assert!(
                !name.starts_with('.') && !name.contains(".tmp"),
                "{}: a temporary file was left behind",
                f.display()
            );
            *kinds.entry(check_file(&f, N)).or_default() += 1;
        }
    }
    for kind in [
        "json",
        "jsonl",
        "mrc",
        "star",
        "h5",
        "png",
        "html",
        "safetensors",
        "cxc",
    ] {
        assert!(kinds.contains_key(kind), "no .{kind} output: {kinds:?}");
    }

    // The files that tie the stages together say the same things.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], STEPS, "metrics.jsonl ends at the last step");
    assert_eq!(json(&run.join("config.json"))["train"]["seed"], 5);
    let sampled = files_under(&samples)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "mrc"))
        .count();
    assert_eq!(sampled, 5, "sample --n 5 writes five maps");
    let m = json(&report.join("metrics.json"));
    assert_eq!(m["training"]["steps"], STEPS);
    let p = &m["probabilities"];
    let total: f64 = ["alpha_0_fraction", "alpha_1_fraction", "transition"]
        .iter()
        .map(|k| p[k].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-12, "probabilities sum to {total}");
    assert_eq!(p["membership"].as_array().unwrap().len(), 4, "--l 4: cells");
    let t0 = p["truth"]["alpha_0_state"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&t0), "truth fraction {t0}");
    let fsccc = &m["fsccc"];
    assert_eq!(
        fsccc["reconstruction"].as_array().unwrap().len(),
        5,
        "--l 4: rows"
    );
    assert_eq!(fsccc["truth"][0][0], 1.0);
    assert!(fsccc["mean_abs_difference"].as_f64().unwrap().is_finite());
    for end in ["alpha_0", "alpha_1"] {
        let f = &m["fsc_ends"][end];
        assert!(f["truth"].as_str().unwrap().starts_with("beta_"), "{f}");
        let area = f["fsc"]["area"].as_f64().unwrap();
        assert!((-1.0..=1.0).contains(&area), "{end}: AreaFSC {area}");
    }
    let history = m["fsc_history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "--history 2");
    for figure in [
        "training_wasserstein.png",
        "training_losses.png",
        "images.png",
        "montage.png",
        "fsc_ends.png",
        "fsc_history.png",
        "fsccc.png",
    ] {
        let (w, h) = png_size(&report.join(figure));
        assert!(w >= 200 && h >= 60, "{figure}: {w}×{h}, too small to read");
    }
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert_eq!(
        html.matches("data:image/png;base64,").count(),
        7,
        "seven figures embedded"
    );

    // A folder that is not a run: a clear error naming what is missing, and a failing status.
    let msg = cli::fails(
        env!("CARGO_BIN_EXE_multicryogan"),
        &[
            "report",
            "--run",
            s(&data),
            "--out",
            s(&dir.path().join("r2")),
        ],
    );
    assert!(msg.contains("metrics.jsonl"), "{msg}");
}
