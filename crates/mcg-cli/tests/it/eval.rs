//! `fsc` and `align`: output formats, written maps and errors that name the file.

use std::path::Path;

use mcg_eval::align::Transform;
use mcg_physics::{Pose, Volume};
use ndarray::Array3;
use serde_json::Value;

use crate::{fails, ok, s};

/// An asymmetric map of Gaussian blobs, `n³` voxels of `apix` Å, written to `path`.
fn write_blobs(path: &Path, n: usize, apix: f32) -> Volume {
    let blobs = [
        ([3.0, 0.0, 0.0], 1.0, 1.5),
        ([-2.0, 3.0, 1.0], 0.7, 1.2),
        ([0.0, -2.0, 3.5], 1.3, 1.6),
        ([-3.0, -2.5, -2.0], 0.5, 1.1),
    ]
    .map(|(centre, amplitude, sigma)| mcg_physics::Blob {
        centre,
        amplitude,
        sigma,
    });
    let volume = Volume::gaussian_blobs(n, apix, &blobs).unwrap();
    mcg_formats::mrc::write_volume(path, &volume).unwrap();
    volume
}

#[test]
fn fsc_json_has_the_curve_resolutions_and_area() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.mrc"), dir.path().join("b.mrc"));
    let map = write_blobs(&a, 16, 4.0);
    // A rotated copy: correlated at low frequency, less so at high.
    let moved = Transform {
        rotation: Pose::new(10.0, 20.0, 30.0).matrix(),
        flipped: false,
        shift_voxels: [0.0; 3],
    }
    .apply(&map);
    mcg_formats::mrc::write_volume(&b, &moved).unwrap();

    let png = dir.path().join("fsc.png");
    let out = ok(&["fsc", s(&a), s(&b), "--json", "--plot", s(&png)]);
    let report: Value = serde_json::from_str(&out).expect("JSON on stdout");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    assert!(bytes.len() > 5_000, "a drawn figure, not an empty one");
    let frequencies = report["frequency_per_A"].as_array().unwrap();
    let curve = report["fsc"].as_array().unwrap();
    assert_eq!(frequencies.len(), 9);
    assert_eq!(curve.len(), 9);
    assert!(
        (frequencies[8].as_f64().unwrap() - 0.125).abs() < 1e-12,
        "Nyquist of 4 Å"
    );
    assert!(report["resolution_A"]["0.5"].is_number() || report["resolution_A"]["0.5"].is_null());
    assert!(report["resolution_A"].get("0.143").is_some());
    let area = report["area"].as_f64().unwrap();
    assert!(area > 0.0 && area < 1.0, "{area}");

    let same: Value = serde_json::from_str(&ok(&[
        "fsc",
        s(&a),
        s(&a),
        "--json",
        "--binning",
        "cryodrgn",
    ]))
    .unwrap();
    assert_eq!(same["fsc"].as_array().unwrap().len(), 8);
    assert!(
        same["fsc"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| (v.as_f64().unwrap() - 1.0).abs() < 1e-9)
    );
    assert!(same["resolution_A"]["0.143"].is_null());

    let text = ok(&["fsc", s(&a), s(&b), "--mask-radius", "24"]);
    assert!(
        text.contains("resolution at FSC 0.143") && text.contains("AreaFSC"),
        "{text}"
    );
}

/// A mask that keeps too few voxels for a shell-wise FSC is refused naming the option and both
/// counts (it used to print FSC 1 in every shell); a mask at the floor (8·N voxels) is accepted.
#[test]
fn fsc_refuses_masks_that_keep_too_few_voxels() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.mrc"), dir.path().join("b.mrc"));
    write_blobs(&a, 16, 4.0);
    write_blobs(&b, 16, 4.0);
    let err = fails(&["fsc", s(&a), s(&b), "--mask-radius", "0.001"]);
    assert!(
        err.contains("--mask-radius 0.001")
            && err.contains("keeps 1 voxel")
            && err.contains("at least 128"),
        "{err}"
    );
    // A mask file of a few voxels (and one of exactly 128, which passes).
    let mask_of = |count: usize, name: &str| {
        let mut m = Array3::<f32>::zeros((16, 16, 16));
        for v in m.iter_mut().skip(1000).take(count) {
            *v = 1.0;
        }
        let path = dir.path().join(name);
        mcg_formats::mrc::write_volume(&path, &Volume::new(m, 4.0).unwrap()).unwrap();
        path
    };
    let sparse = mask_of(5, "sparse_mask.mrc");
    let err = fails(&["fsc", s(&a), s(&b), "--mask", s(&sparse), "--json"]);
    assert!(
        err.contains("--mask")
            && err.contains("sparse_mask.mrc")
            && err.contains("keeps 5 voxel")
            && err.contains("at least 128"),
        "{err}"
    );
    let enough = mask_of(128, "enough_mask.mrc");
    let report: Value =
        serde_json::from_str(&ok(&["fsc", s(&a), s(&b), "--mask", s(&enough), "--json"])).unwrap();
    assert_eq!(report["fsc"].as_array().unwrap().len(), 9);
}

#[test]
fn align_writes_the_aligned_map_at_the_reference_voxel_size() {
    let dir = tempfile::tempdir().unwrap();
    let (vol, reference, out) = (
        dir.path().join("vol.mrc"),
        dir.path().join("ref.mrc"),
        dir.path().join("aligned.mrc"),
    );
    let map = write_blobs(&reference, 16, 5.0);
    let moved = Transform {
        rotation: Pose::new(40.0, 70.0, -20.0).matrix(),
        flipped: true,
        shift_voxels: [1.0, 0.0, -1.0],
    }
    .apply(&map);
    mcg_formats::mrc::write_volume(&vol, &moved).unwrap();

    let report: Value = serde_json::from_str(&ok(&[
        "align",
        s(&vol),
        s(&reference),
        "--out",
        s(&out),
        "--json",
        "-q",
    ]))
    .unwrap();
    for key in [
        "euler_deg",
        "flipped",
        "shift_A",
        "correlation_before",
        "correlation_after",
    ] {
        assert!(report.get(key).is_some(), "{key} missing: {report}");
    }
    assert_eq!(report["flipped"], true);
    let (before, after) = (
        report["correlation_before"].as_f64().unwrap(),
        report["correlation_after"].as_f64().unwrap(),
    );
    assert!(after > 0.95 && after > before, "{before} → {after}");
    let header = mcg_formats::mrc::read_header(&out).unwrap();
    assert_eq!(header.shape(), (16, 16, 16));
    assert!((header.voxel_size().unwrap() - 5.0).abs() < 1e-6);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn maps_that_cannot_be_compared_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.mrc"),
        dir.path().join("other_box.mrc"),
        dir.path().join("other_apix.mrc"),
    );
    write_blobs(&a, 16, 4.0);
    write_blobs(&b, 8, 4.0);
    write_blobs(&c, 16, 3.0);

    let err = fails(&["fsc", s(&a), s(&b)]);
    assert!(
        err.contains("other_box.mrc") && err.contains("box"),
        "{err}"
    );
    let err = fails(&["align", s(&a), s(&c), "--out", s(&dir.path().join("x.mrc"))]);
    assert!(
        err.contains("other_apix.mrc") && err.contains("voxel size"),
        "{err}"
    );
    assert!(!dir.path().join("x.mrc").exists());
    let err = fails(&["fsc", s(&a), "/nonexistent/map.mrc"]);
    assert!(err.contains("/nonexistent/map.mrc"), "{err}");
    let err = fails(&["fsc", s(&a), s(&a), "--mask", s(&b)]);
    assert!(err.contains("other_box.mrc"), "{err}");
    // A constant (all-zero) map has no FSC: refused, not a resolution (issue 13, class 4).
    let zero = dir.path().join("zero.mrc");
    mcg_formats::mrc::write_volume(
        &zero,
        &Volume::new(Array3::zeros((16, 16, 16)), 4.0).unwrap(),
    )
    .unwrap();
    for args in [
        &["fsc", s(&a), s(&zero)][..],
        &["fsc", s(&zero), s(&a), "--json"],
    ] {
        let err = fails(args);
        assert!(
            err.contains("zero.mrc") && err.contains("every voxel is 0"),
            "{err}"
        );
    }
}
