//! `multicryogan synth` and `merge-shards`.

use std::path::Path;

use mcg_formats::ParticleSet;
use mcg_formats::star::{StarOptions, read_particles};
use mcg_physics::noise::NoiseSpectrum;
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

/// Per image, the mean and standard deviation of the pixels outside the circle of radius
/// N/2 − 1 (RELION's background).
fn background_moments(images: &ndarray::Array3<f32>) -> Vec<(f64, f64)> {
    let n = images.dim().1;
    let (c, r) = ((n / 2) as f64, n as f64 / 2.0 - 1.0);
    images
        .outer_iter()
        .map(|image| {
            let outside: Vec<f64> = image
                .indexed_iter()
                .filter(|((y, x), _)| (*y as f64 - c).powi(2) + (*x as f64 - c).powi(2) > r * r)
                .map(|(_, &v)| f64::from(v))
                .collect();
            let mean = outside.iter().sum::<f64>() / outside.len() as f64;
            let var =
                outside.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / outside.len() as f64;
            (mean, var.sqrt())
        })
        .collect()
}

/// The manifest's noise spectrum.
fn manifest_spectrum(m: &Value) -> NoiseSpectrum {
    serde_json::from_value(m["noise"]["spectrum"].clone()).expect("a noise spectrum")
}

/// `--conditions realistic` at 64²: RELION-normalised particles (background mean 0, std 1 per
/// image), Gaussian shifts of 2 px (10 Å) within 4 standard errors (12 %), and a background
/// stack whose measured spectrum has the manifest's shape within 12 % per shell up to Nyquist
/// (shell 1 has 4 independent samples per image: 2.9 % standard error over 300 images) and
/// unit pixel variance within 5 %.
#[test]
fn realistic_conditions_make_normalised_shifted_coloured_noise_and_background() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("realistic");
    let count = 300;
    ok(&[
        "synth",
        "--preset",
        "hsp90-continuous",
        "--n",
        &count.to_string(),
        "--calibration-images",
        "300",
        "--box",
        "64",
        "--states",
        "2",
        "--no-h5",
        "--conditions",
        "realistic",
        "--background",
        "300",
        "--out",
        s(&out),
        "-q",
    ]);
    let m = manifest(&out);
    assert_eq!(m["settings"]["conditions"], "realistic");
    assert_eq!(m["settings"]["background_images"], 300);
    assert_eq!(m["settings"]["normalization"]["kind"], "background");
    assert_eq!(m["settings"]["imaging"]["shift_sigma"], 10.0);
    assert_eq!(m["noise"]["snr_db"], -20.0);
    assert_eq!(m["noise"]["model"], "realistic");
    assert_eq!(m["outputs"]["background"], "background.mrcs");
    let sigma = m["noise"]["sigma"].as_f64().unwrap();
    let spectrum = manifest_spectrum(&m);
    assert_eq!(spectrum.box_size(), 64);
    assert!((spectrum.variance() / (sigma * sigma) - 1.0).abs() < 1e-9);

    let images = pixels(&out.join("particles.mrcs"));
    assert_eq!(images.dim(), (count, 64, 64));
    for (i, (mean, std)) in background_moments(&images).into_iter().enumerate() {
        assert!(
            mean.abs() < 1e-4 && (std - 1.0).abs() < 1e-3,
            "image {i}: {mean} ± {std}"
        );
    }

    let set = particles(&out.join("particles.star"));
    let shifts: Vec<f64> = set
        .particles
        .iter()
        .flat_map(|p| [p.shift.x, p.shift.y])
        .collect();
    let k = shifts.len() as f64;
    let sd = (shifts.iter().map(|v| v * v).sum::<f64>() / k).sqrt();
    assert!(
        (sd / 10.0 - 1.0).abs() < 4.0 / (2.0 * k).sqrt(),
        "shift sd {sd} Å"
    );

    let background = pixels(&out.join("background.mrcs"));
    assert_eq!(background.dim(), (300, 64, 64));
    for (i, (mean, std)) in background_moments(&background).into_iter().enumerate() {
        assert!(
            mean.abs() < 1e-4 && (std - 1.0).abs() < 1e-3,
            "background {i}: {mean} ± {std}"
        );
    }
    let measured = NoiseSpectrum::estimate_background(background.view(), 0.0).unwrap();
    assert!(
        (measured.variance() - 1.0).abs() < 0.05,
        "variance {}",
        measured.variance()
    );
    let (a, b) = (
        measured.scaled_to_variance(1.0),
        spectrum.scaled_to_variance(1.0),
    );
    for i in 1..=32 {
        let ratio = a.power()[i] / b.power()[i];
        assert!(
            (ratio - 1.0).abs() < 0.12,
            "shell {i}: measured / manifest = {ratio}"
        );
    }
    // The particles' noise is not the background images' (independent streams).
    assert_ne!(
        images.index_axis(ndarray::Axis(0), 0),
        background.index_axis(ndarray::Axis(0), 0)
    );
}

/// Flags override the bundle; the measured SNR of coloured noise (noisy − clean images of the
/// same seed, 200 images of 32²) is the requested −20 dB within 0.2 dB, its pixel variance σ²
/// within 3 %.
#[test]
fn flags_override_the_conditions_and_the_snr_is_the_requested_one() {
    let dir = tempfile::tempdir().unwrap();
    let common = [
        "synth",
        "--preset",
        "hsp90-continuous",
        "--calibration-images",
        "200",
        "--states",
        "2",
        "--no-h5",
        "--conditions",
        "realistic",
        "--seed",
        "4",
        "-q",
    ];
    let base = [&common[..], &["--n", "200", "--normalize", "none"]].concat();
    let (noisy, clean) = (dir.path().join("noisy"), dir.path().join("clean"));
    ok(&[&base[..], &["--out", s(&noisy)]].concat());
    ok(&[&base[..], &["--out", s(&clean), "--clean"]].concat());
    let m = manifest(&noisy);
    assert_eq!(m["settings"]["normalization"]["kind"], "none");
    assert_eq!(m["noise"]["model"], "realistic");
    let sigma = m["noise"]["sigma"].as_f64().unwrap();
    let (a, b) = (
        pixels(&noisy.join("particles.mrcs")),
        pixels(&clean.join("particles.mrcs")),
    );
    let noise = &a - &b;
    let var = noise.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / noise.len() as f64;
    assert!(
        (var / (sigma * sigma) - 1.0).abs() < 0.03,
        "noise variance {var}, σ² {}",
        sigma * sigma
    );
    let s2 = b
        .outer_iter()
        .map(mcg_physics::noise::image_variance)
        .sum::<f64>()
        / b.dim().0 as f64;
    let snr = 10.0 * (s2 / var).log10();
    assert!((snr + 20.0).abs() < 0.2, "measured SNR {snr} dB");

    let other = dir.path().join("other");
    ok(&[
        &common[..],
        &[
            "--out",
            s(&other),
            "--snr-db",
            "-5",
            "--noise",
            "white",
            "--max-shift",
            "5",
        ],
        &["--normalize", "background", "--n", "20", "--box", "16"],
    ]
    .concat());
    let m = manifest(&other);
    assert_eq!(m["noise"]["snr_db"], -5.0);
    assert!(m["noise"].get("model").is_none() && m["noise"].get("spectrum").is_none());
    assert_eq!(m["settings"]["imaging"]["max_shift"], 5.0);
    assert!(m["settings"]["imaging"].get("shift_sigma").is_none());
    assert_eq!(m["settings"]["normalization"]["kind"], "background");
}

#[test]
fn spectrum_files_are_used_and_bad_ones_are_named_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let base = [
        "synth",
        "--preset",
        "hsp90-closed",
        "--n",
        "60",
        "--calibration-images",
        "60",
        "--box",
        "16",
        "--no-h5",
        "-q",
    ];
    let good = dir.path().join("measured.json");
    let shape = NoiseSpectrum::realistic(16, 1.0);
    std::fs::write(&good, serde_json::to_string(&shape).unwrap()).unwrap();
    let noise = format!("spectrum:{}", good.display());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(&[
        &base[..],
        &["--noise", &noise, "--background", "30", "--out", s(&a)],
    ]
    .concat());
    ok(&[
        &base[..],
        &["--noise", &noise, "--background", "30", "--out", s(&b)],
        &["--batch", "7", "--threads", "1"],
    ]
    .concat());
    for file in ["particles.mrcs", "background.mrcs"] {
        assert_eq!(
            pixels(&a.join(file)),
            pixels(&b.join(file)),
            "{file}: same seed, same bits"
        );
    }
    let m = manifest(&a);
    assert_eq!(m["noise"]["model"], good.display().to_string());
    let sigma = m["noise"]["sigma"].as_f64().unwrap();
    let recorded = manifest_spectrum(&m);
    for (r, p) in recorded.power().iter().zip(shape.power()) {
        assert!((r / (p * sigma * sigma) - 1.0).abs() < 1e-9);
    }

    // Bad files: the file and the field are named, the exit status is non-zero, nothing is
    // written.
    let mut power = shape.power().to_vec();
    power[2] = -1.0;
    let cases = [
        (
            serde_json::json!({"box_size": 16, "power": power}).to_string(),
            "power[2]",
        ),
        (r#"{"box_size": 16}"#.to_string(), "missing field `power`"),
        (
            serde_json::to_string(&NoiseSpectrum::white(32, 1.0)).unwrap(),
            "box_size",
        ),
        (r#"{"box_size": 16, "power": [1, 2]}"#.to_string(), "power"),
    ];
    for (i, (text, field)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.json"));
        std::fs::write(&file, text).unwrap();
        let out = dir.path().join(format!("bad{i}"));
        let msg = fails(
            &[
                &base[..],
                &[
                    "--noise",
                    &format!("spectrum:{}", file.display()),
                    "--out",
                    s(&out),
                ],
            ]
            .concat(),
        );
        assert!(
            msg.contains(&format!("bad{i}.json")) && msg.contains(field),
            "{msg}"
        );
        assert!(
            !out.exists(),
            "{}: written despite the error",
            out.display()
        );
    }
    let out = dir.path().join("never");
    let msg = fails(&[&base[..], &["--noise", "pink", "--out", s(&out)]].concat());
    assert!(
        msg.contains("white, realistic or spectrum:FILE.json"),
        "{msg}"
    );
    let msg = fails(
        &[
            &base[..],
            &["--shift-sigma", "1", "--max-shift", "3", "--out", s(&out)],
        ]
        .concat(),
    );
    assert!(msg.contains("--shift-sigma and --max-shift"), "{msg}");
    let msg = fails(
        &[
            &base[..],
            &["--clean", "--background", "5", "--out", s(&out)],
        ]
        .concat(),
    );
    assert!(msg.contains("--background 5"), "{msg}");
    assert!(!out.exists());
}
