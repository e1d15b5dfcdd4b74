//! Each command does its job.

use mcg_formats::star::{StarOptions, read_particles};
use serde_json::Value;

use crate::{ok, pixels, s, shared};

#[test]
fn project_writes_stack_star_and_manifest_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    // Every run has the same settings; only the seed, threads and batch size vary.
    let common = [
        "project",
        "--n",
        "300",
        "--box",
        "16",
        "--ctf",
        "--snr-db",
        "-10",
        "--max-shift",
        "5",
        "-q",
    ];
    let run = |seed: &str, extra: &[&str], out: &std::path::Path| {
        ok(&[&common[..], &["--seed", seed, "--out", s(out)], extra].concat());
    };
    run("7", &["--threads", "1"], &a);
    run("7", &["--threads", "2", "--batch", "37"], &b);
    let first = pixels(&a.join("particles.mrcs"));
    assert_eq!(first.dim(), (300, 16, 16));
    assert_eq!(
        first,
        pixels(&b.join("particles.mrcs")),
        "threads or batch size changed the data"
    );
    run("8", &[], &c);
    assert_ne!(
        first,
        pixels(&c.join("particles.mrcs")),
        "the seed must matter"
    );

    let set = read_particles(&a.join("particles.star"), &StarOptions::default()).unwrap();
    assert_eq!(set.len(), 300);
    assert!(set.particles.iter().all(|p| p.pose.is_some()));
    assert!(set.particles.iter().any(|p| p.shift.x != 0.0));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["seed"], 7);
    assert_eq!(manifest["images"], 300);
    let sigma = manifest["noise"]["sigma"].as_f64().unwrap();
    let s2 = manifest["noise"]["signal_variance"].as_f64().unwrap();
    assert!(
        (10.0 * (s2 / (sigma * sigma)).log10() + 10.0).abs() < 1e-9,
        "σ must give −10 dB"
    );
    assert!(
        manifest["noise"]["snr_definition"]
            .as_str()
            .unwrap()
            .contains("variance")
    );
}

/// Simulating from a STAR file reproduces the images of the run that wrote it: its poses,
/// shifts and CTFs survive the STAR file (to the precision of its text).
#[test]
fn project_from_star_reproduces_the_run_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    ok(&[
        "project",
        "--n",
        "50",
        "--box",
        "24",
        "--ctf",
        "--max-shift",
        "8",
        "--seed",
        "2",
        "-q",
        "--out",
        s(&first),
    ]);
    ok(&[
        "project",
        "--star",
        s(&first.join("particles.star")),
        "--box",
        "24",
        "--ctf",
        "-q",
        "--out",
        s(&second),
    ]);
    let (a, b) = (
        pixels(&first.join("particles.mrcs")),
        pixels(&second.join("particles.mrcs")),
    );
    let err = (&a - &b).mapv(|v| f64::from(v).powi(2)).sum().sqrt()
        / a.mapv(|v| f64::from(v).powi(2)).sum().sqrt();
    assert!(err < 1e-4, "relative difference {err:.2e}");
}

#[test]
fn convert_round_trips_star_h5_star_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    ok(&[
        "project",
        "--n",
        "120",
        "--box",
        "16",
        "--ctf",
        "--snr-db",
        "0",
        "-q",
        "--out",
        s(&sim),
    ]);
    let h5 = dir.path().join("set.h5");
    let back = dir.path().join("back/particles.star");
    ok(&["convert", s(&sim.join("particles.star")), s(&h5), "-q"]);
    ok(&["convert", s(&h5), s(&back), "-q"]);
    let original = std::fs::read(sim.join("particles.mrcs")).unwrap();
    assert_eq!(
        original,
        std::fs::read(back.with_extension("mrcs")).unwrap(),
        "stack bytes changed"
    );
    let (x, y) = (
        read_particles(&sim.join("particles.star"), &StarOptions::default()).unwrap(),
        read_particles(&back, &StarOptions::default()).unwrap(),
    );
    assert_eq!(x.optics, y.optics);
    assert_eq!(x.extra, y.extra);
    for (p, q) in x.particles.iter().zip(&y.particles) {
        assert_eq!(
            (p.pose, p.shift, p.ctf, p.class),
            (q.pose, q.shift, q.ctf, q.class)
        );
    }
}

#[test]
fn info_describes_maps_and_particle_sets() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    ok(&[
        "project",
        "--n",
        "10",
        "--box",
        "16",
        "--apix",
        "2.5",
        "-q",
        "--out",
        s(&sim),
    ]);
    let map: Value =
        serde_json::from_str(&ok(&["info", s(&sim.join("particles.mrcs")), "--json"])).unwrap();
    assert_eq!(map["shape_zyx"], serde_json::json!([10, 16, 16]));
    assert_eq!(map["voxel_size_A"], 2.5);
    let set: Value = serde_json::from_str(&ok(&[
        "info",
        s(&sim.join("particles.star")),
        "--json",
        "--read-images",
    ]))
    .unwrap();
    assert_eq!(set["particles"], 10);
    assert_eq!(set["optics_groups"][0]["pixel_size_A"], 2.5);
    assert_eq!(set["optics_groups"][0]["box"], 16);
    assert_eq!(set["images_read"]["stats"]["pixels"], 10 * 16 * 16);
    // Text output names the same facts.
    assert!(ok(&["info", s(&sim.join("particles.star"))]).contains("particles: 10"));
    // Output into a pipe whose reader has gone (`| head -1` once it has its line) ends the
    // program quietly, with SIGPIPE's status as the shell reports it, not a panic.
    for json in [false, true] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_multicryogan"));
        cmd.args(["info", s(&sim.join("particles.star")), "--read-images"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.stdout(writer).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(141), "json {json}: {stderr}");
        assert!(stderr.is_empty(), "json {json}: {stderr}");
    }
}

#[test]
fn ctf_writes_each_particles_ctf_centred() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    ok(&[
        "project",
        "--n",
        "4",
        "--box",
        "32",
        "--amp-contrast",
        "0.07",
        "-q",
        "--out",
        s(&sim),
    ]);
    let out = dir.path().join("ctf.mrcs");
    ok(&[
        "ctf",
        "--star",
        s(&sim.join("particles.star")),
        "--out",
        s(&out),
        "-q",
    ]);
    let ctf = pixels(&out);
    assert_eq!(ctf.dim(), (4, 32, 32));
    for i in 0..4 {
        assert!((ctf[[i, 16, 16]] - 0.07).abs() < 1e-6, "CTF(0) must be +Q0");
        // Symmetric about the centre: CTF(k) = CTF(−k).
        assert!((ctf[[i, 16, 20]] - ctf[[i, 16, 12]]).abs() < 1e-6);
    }
}

/// Other programs' files open and convert: cryoDRGN's RELION 3.1 set and the cryoSPARC `.cs`
/// of the same EMPIAR images as a STAR file.
#[test]
fn other_programs_files_convert() {
    let Some(relion) = shared("interop/cryodrgn/relion31.star") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let h5 = dir.path().join("relion31.h5");
    ok(&["convert", s(&relion), s(&h5), "-q"]);
    let info: Value = serde_json::from_str(&ok(&["info", s(&h5), "--json"])).unwrap();
    assert_eq!(info["particles"], 5);
    assert_eq!(info["optics_groups"][0]["box"], 256);
    let stack = pixels(&relion.with_extension("mrcs"));
    let back = dir.path().join("back.star");
    ok(&["convert", s(&h5), s(&back), "-q"]);
    assert_eq!(
        stack,
        pixels(&back.with_extension("mrcs")),
        "images must be bit-exact"
    );

    let cs = shared("interop/cryodrgn/empiar_10076_7.cs").unwrap();
    let star = shared("interop/cryodrgn/empiar_10076_7.star").unwrap();
    let data = cs.parent().unwrap();
    let from_cs = dir.path().join("from_cs.star");
    let from_star = dir.path().join("from_star.star");
    ok(&["convert", s(&cs), s(&from_cs), "--data-dir", s(data), "-q"]);
    ok(&["convert", s(&star), s(&from_star), "-q"]);
    assert_eq!(
        pixels(&from_cs.with_extension("mrcs")),
        pixels(&from_star.with_extension("mrcs"))
    );
}

/// `--volume` projects a user's map: the images are the library simulator's for the same
/// poses, and the voxel size comes from the map's header.
#[test]
fn project_projects_a_map_file() {
    use mcg_physics::simulate::{ImagingParams, ProjectorKind, Simulator};
    let dir = tempfile::tempdir().unwrap();
    let n = 16;
    let data = ndarray::Array3::from_shape_fn((n, n, n), |(z, y, x)| {
        let d2 = (x as f32 - 9.0).powi(2) + (y as f32 - 7.0).powi(2) + (z as f32 - 8.0).powi(2);
        (-d2 / 8.0).exp()
    });
    let volume = mcg_physics::Volume::new(data, 3.5).unwrap();
    let map = dir.path().join("map.mrc");
    mcg_formats::mrc::write_volume(&map, &volume).unwrap();
    let out = dir.path().join("sim");
    ok(&[
        "project",
        "--volume",
        s(&map),
        "--n",
        "6",
        "--seed",
        "4",
        "-q",
        "--out",
        s(&out),
    ]);

    let set = read_particles(&out.join("particles.star"), &StarOptions::default()).unwrap();
    assert_eq!(set.optics[0].pixel_size, 3.5);
    let params: Vec<ImagingParams> = set
        .particles
        .iter()
        .map(|p| ImagingParams {
            pose: p.pose.unwrap(),
            shift: p.shift,
            ctf: p.ctf,
        })
        .collect();
    let mut want = ndarray::Array3::zeros((6, n, n));
    Simulator::new(&volume, ProjectorKind::Fourier).clean(&params, false, want.view_mut());
    let got = pixels(&out.join("particles.mrcs"));
    let err = (&got - &want).mapv(|v| f64::from(v).powi(2)).sum().sqrt()
        / want.mapv(|v| f64::from(v).powi(2)).sum().sqrt();
    assert!(err < 1e-5, "CLI and library differ by {err:.2e}");

    if let Some(hand) = shared("interop/cryodrgn/hand-vol.mrc") {
        let out = dir.path().join("hand");
        ok(&[
            "project",
            "--volume",
            s(&hand),
            "--n",
            "3",
            "--ctf",
            "-q",
            "--out",
            s(&out),
        ]);
        assert_eq!(pixels(&out.join("particles.mrcs")).dim(), (3, 64, 64));
    }
}

/// `downsample` Fourier-crops every image (the same pixels as the library's crop of each input
/// image), doubles the pixel size at half the box, keeps poses, shifts and CTFs, and refuses a
/// box it cannot make, naming --box.
#[test]
fn downsample_crops_the_images_and_updates_the_pixel_size() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    ok(&[
        "project",
        "--n",
        "12",
        "--ctf",
        "--snr-db",
        "0",
        "--max-shift",
        "5",
        "--seed",
        "4",
        "--out",
        s(&sim),
        "-q",
    ]);
    let small = dir.path().join("small.star");
    ok(&[
        "downsample",
        s(&sim.join("particles.star")),
        "--box",
        "16",
        s(&small),
        "-q",
    ]);
    let before = read_particles(&sim.join("particles.star"), &StarOptions::default()).unwrap();
    let after = read_particles(&small, &StarOptions::default()).unwrap();
    assert_eq!(after.len(), 12);
    assert_eq!(after.optics[0].image_size, Some(16));
    assert!((after.optics[0].pixel_size - 2.0 * before.optics[0].pixel_size).abs() < 1e-9);
    for (a, b) in before.particles.iter().zip(&after.particles) {
        assert_eq!((a.pose, a.shift, a.ctf), (b.pose, b.shift, b.ctf));
    }
    let (big, cropped) = (
        pixels(&sim.join("particles.mrcs")),
        pixels(&small.with_extension("mrcs")),
    );
    assert_eq!(cropped.dim(), (12, 16, 16));
    for (image, got) in big.outer_iter().zip(cropped.outer_iter()) {
        assert_eq!(mcg_dataset::downsample::crop(image, 16), got);
    }
    for (bad, why) in [("15", "even"), ("64", "the images' 32")] {
        let out = dir.path().join(format!("bad{bad}.star"));
        let msg = crate::fails(&[
            "downsample",
            s(&sim.join("particles.star")),
            "--box",
            bad,
            s(&out),
        ]);
        assert!(msg.contains("--box") && msg.contains(why), "{msg}");
        assert!(
            !out.exists(),
            "a refused downsample wrote {}",
            out.display()
        );
    }
}
