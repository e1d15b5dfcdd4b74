//! `multicryogan synth` and `merge-shards`.

use std::path::Path;

use mcg_formats::ParticleSet;
use mcg_formats::star::{StarOptions, read_particles};
use serde_json::Value;

use crate::{fails, ok, pixels, run, s, shared};

/// A small continuous Hsp90 set on the phantom (the test's folder has no `../shared` beside
/// it at the default path).
const SMALL: [&str; 8] = [
    "synth",
    "--preset",
    "hsp90-continuous",
    "--n",
    "240",
    "--calibration-images",
    "100",
    "-q",
];

fn manifest(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn particles(star: &Path) -> ParticleSet {
    read_particles(star, &StarOptions::default()).unwrap()
}

fn column<'a>(set: &'a ParticleSet, label: &str) -> &'a [String] {
    &set.extra.iter().find(|(l, _)| l == label).unwrap().1
}

#[test]
fn synth_writes_every_output_on_the_phantom_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&[
        &SMALL[..],
        &["--seed", "5", "--out", s(&a), "--threads", "1"],
    ]
    .concat());
    ok(&[
        &SMALL[..],
        &["--seed", "5", "--out", s(&b), "--batch", "37", "--no-h5"],
    ]
    .concat());
    let images = pixels(&a.join("particles.mrcs"));
    assert_eq!(images.dim(), (240, 32, 32));
    assert_eq!(
        images,
        pixels(&b.join("particles.mrcs")),
        "threads or batch size changed the data"
    );
    assert!(!b.join("particles.h5").exists());

    let m = manifest(&a);
    assert_eq!(m["settings"]["phantom"], true);
    assert_eq!(m["settings"]["seed"], 5);
    assert!(m["noise"]["sigma"].as_f64().unwrap() > 0.0);
    assert!(
        m["noise"]["snr_definition"]
            .as_str()
            .unwrap()
            .contains("variance")
    );
    assert!(m["software"].as_str().unwrap().starts_with("multicryogan "));

    // The STAR carries the true β of each particle, in range, and declares the column.
    let set = particles(&a.join("particles.star"));
    assert_eq!(set.len(), 240);
    let betas: Vec<f64> = column(&set, "_mcgBeta")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(betas.iter().all(|b| (0.0..20.0).contains(b)));
    let text = std::fs::read_to_string(a.join("particles.star")).unwrap();
    assert!(
        text.starts_with("# written by multicryogan"),
        "{}",
        &text[..200]
    );
    assert!(text.contains("# _mcgBeta: the true value"));
    assert!(set.particles.iter().all(|p| p.class.is_none()));

    // 21 ground-truth maps, 32³ of 5 Å, in the folder and in the container.
    for beta in 0..=20 {
        let map = mcg_formats::mrc::read_volume(
            &a.join("ground_truth").join(format!("beta_{beta:02}.mrc")),
            None,
        )
        .unwrap();
        assert_eq!((map.box_size(), map.apix()), (32, 5.0));
    }
    let h5 = mcg_h5::H5Particles::open(&a.join("particles.h5")).unwrap();
    assert_eq!(h5.ground_truth_volumes().unwrap().len(), 21);
    let mut first = ndarray::Array3::zeros((2, 32, 32));
    h5.read_images(&[0, 239], first.view_mut()).unwrap();
    assert_eq!(
        first.index_axis(ndarray::Axis(0), 1),
        images.index_axis(ndarray::Axis(0), 239)
    );
    let landscape: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("landscape.json")).unwrap()).unwrap();
    assert_eq!(landscape["name"], "hsp90-continuous");

    // A run with the same settings finds the set complete and leaves it alone.
    let before = std::fs::metadata(a.join("particles.mrcs"))
        .unwrap()
        .modified()
        .unwrap();
    ok(&[&SMALL[..], &["--seed", "5", "--out", s(&a)]].concat());
    let after = std::fs::metadata(a.join("particles.mrcs"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn shards_merge_into_the_whole_set() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, parts) = (dir.path().join("whole"), dir.path().join("parts"));
    let base = [
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        "100",
        "--calibration-images",
        "50",
        "-q",
    ];
    ok(&[&base[..], &["--out", s(&whole), "--no-h5"]].concat());
    for k in ["2/3", "1/3"] {
        ok(&[&base[..], &["--out", s(&parts), "--shard", k]].concat());
    }
    let msg = fails(&["merge-shards", s(&parts)]);
    assert!(msg.contains("shard 3/3 is missing"), "{msg}");
    ok(&[&base[..], &["--out", s(&parts), "--shard", "3/3"]].concat());
    ok(&["merge-shards", s(&parts), "-q"]);

    let a = particles(&whole.join("particles.star"));
    let b = particles(&parts.join("particles.star"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.particles.iter().zip(&b.particles) {
        assert_eq!(
            (x.pose, x.shift, x.ctf, x.class),
            (y.pose, y.shift, y.ctf, y.class)
        );
    }
    assert_eq!(column(&a, "_mcgBeta"), column(&b, "_mcgBeta"));
    // The merged set's images, shard by shard, are the whole set's.
    let mut merged = Vec::new();
    for k in 1..=3 {
        merged.push(pixels(
            &parts.join(format!("shards/{k}-of-3/particles.mrcs")),
        ));
    }
    let views: Vec<_> = merged.iter().map(|m| m.view()).collect();
    assert_eq!(
        ndarray::concatenate(ndarray::Axis(0), &views).unwrap(),
        pixels(&whole.join("particles.mrcs"))
    );
    let h5 = mcg_h5::H5Particles::open(&parts.join("particles.h5")).unwrap();
    assert_eq!(h5.particle_set().unwrap().len(), 100);
    let m = manifest(&parts);
    assert_eq!(m["shards"], 3);
    let counts: Vec<u64> = m["class_counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 100);
}

#[test]
fn discrete_set_has_the_benchmark_fractions_from_the_structures() {
    let Some(structures) = shared("structures/hsp90") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    let n = 4000;
    ok(&[
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        &n.to_string(),
        "--structures",
        s(&structures),
        "--clean",
        "--no-h5",
        "--box",
        "16",
        "--apix",
        "10",
        "--out",
        s(&out),
        "-q",
    ]);
    let m = manifest(&out);
    assert_eq!(m["settings"]["phantom"], false);
    assert!(
        m["settings"]["structures"]
            .as_str()
            .unwrap()
            .contains("2cg9_chainA_res12-677.pdb")
    );
    let set = particles(&out.join("particles.star"));
    let open = set.particles.iter().filter(|p| p.class == Some(2)).count() as f64 / n as f64;
    let se = (0.75f64 * 0.25 / n as f64).sqrt();
    assert!((open - 0.75).abs() < 4.0 * se, "open fraction {open}");
    // Classes and β agree: class 1 is β = 0°, class 2 is β = 20°.
    for (p, beta) in set.particles.iter().zip(column(&set, "_mcgBeta")) {
        let beta: f64 = beta.parse().unwrap();
        assert_eq!(p.class, Some(if beta == 0.0 { 1 } else { 2 }));
    }
}

#[test]
fn synth_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let msg = fails(
        &[
            &SMALL[..],
            &["--out", s(&out), "--structures", s(dir.path())],
        ]
        .concat(),
    );
    assert!(
        msg.contains("--structures") && msg.contains("2cg9_chainA_res12-677.pdb"),
        "{msg}"
    );
    let msg = fails(&[&SMALL[..], &["--out", s(&out), "--shard", "4/3"]].concat());
    assert!(msg.contains("--shard \"4/3\""), "{msg}");
    let landscape = dir.path().join("l.json");
    std::fs::write(
        &landscape,
        r#"{"name": "x", "structures": [], "bodies": [], "motions": [], "parameters": []}"#,
    )
    .unwrap();
    let msg = fails(&["synth", "--landscape", s(&landscape), "--out", s(&out)]);
    assert!(
        msg.contains("l.json") && msg.contains("structures"),
        "{msg}"
    );
    let out2 = run(&["synth", "--out", s(&out)]);
    assert!(!out2.status.success());
}

#[test]
fn landscape_file_of_discrete_models_makes_a_set() {
    let Some(adk) = shared("structures/adk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let landscape = dir.path().join("adk.json");
    std::fs::write(
        &landscape,
        r#"{"name": "adk", "structures": [], "bodies": [], "motions": [], "parameters": [],
            "discrete_models": [
              {"name": "closed", "path": "adk_closed.pdb", "weight": 1.0},
              {"name": "open", "path": "adk_open.pdb", "weight": 1.0}]}"#,
    )
    .unwrap();
    let out = dir.path().join("o");
    ok(&[
        "synth",
        "--landscape",
        s(&landscape),
        "--structures",
        s(&adk),
        "--n",
        "200",
        "--box",
        "32",
        "--apix",
        "2.5",
        "--calibration-images",
        "50",
        "--out",
        s(&out),
        "-q",
    ]);
    let set = particles(&out.join("particles.star"));
    assert!(set.particles.iter().all(|p| matches!(p.class, Some(1 | 2))));
    assert!(out.join("ground_truth/model_1_closed.mrc").is_file());
    assert!(out.join("ground_truth/model_2_open.mrc").is_file());
}

#[test]
fn single_conformation_presets_fix_beta_and_write_one_ground_truth_map() {
    let dir = tempfile::tempdir().unwrap();
    for (preset, beta, map) in [
        ("hsp90-closed", "0", "beta_00.mrc"),
        ("hsp90-open", "20", "beta_20.mrc"),
    ] {
        let out = dir.path().join(preset);
        ok(&[
            "synth",
            "--preset",
            preset,
            "--n",
            "40",
            "--calibration-images",
            "20",
            "--out",
            s(&out),
            "-q",
        ]);
        let set = particles(&out.join("particles.star"));
        assert!(
            column(&set, "_mcgBeta")
                .iter()
                .all(|b| b.parse::<f64>().unwrap() == beta.parse::<f64>().unwrap())
        );
        let maps: Vec<String> = std::fs::read_dir(out.join("ground_truth"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".mrc"))
            .collect();
        assert_eq!(maps, vec![map.to_string()], "{preset}");
    }
}
