//! Ground-truth volumes round trip with their voxel size and order.

use mcg_h5::{H5Particles, H5Writer};
use mcg_physics::Volume;
use ndarray::Array3;

use crate::common::*;

fn volume(n: usize, apix: f32, seed: f32) -> Volume {
    let data = Array3::from_shape_fn((n, n, n), |(z, y, x)| {
        seed + (z * 10_000 + y * 100 + x) as f32 * 0.001
    });
    Volume::new(data, apix).unwrap()
}

#[test]
fn volumes_round_trip_in_order_with_pixel_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gt.h5");
    let (n, b) = (3, 4);
    let images = random_images(n, b, 1);
    let volumes = [
        ("beta_10", volume(8, 5.0, 1.0)),
        ("beta_02", volume(8, 2.5, -3.0)),
        ("closed", volume(4, 1.75, 0.5)),
    ];
    let mut w = H5Writer::create(&path, b, 5.0, n).unwrap();
    w.write_images(0, images.data.view()).unwrap();
    for (name, v) in &volumes {
        w.write_ground_truth_volume(name, v).unwrap();
    }
    w.finish(&full_set(n, 2)).unwrap();

    let got = H5Particles::open(&path)
        .unwrap()
        .ground_truth_volumes()
        .unwrap();
    let want: Vec<(String, Volume)> = volumes
        .iter()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn file_without_volumes_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("none.h5");
    let images = random_images(2, 4, 3);
    mcg_h5::write_particle_set(&path, &full_set(2, 4), &images, 2, &mut |_, _| {}).unwrap();
    assert!(
        H5Particles::open(&path)
            .unwrap()
            .ground_truth_volumes()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn bad_or_repeated_volume_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("names.h5");
    let mut w = H5Writer::create(&path, 4, 5.0, 1).unwrap();
    let v = volume(4, 5.0, 0.0);
    for bad in ["", "a/b", ".", ".."] {
        let e = w
            .write_ground_truth_volume(bad, &v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("names.h5") && e.contains("volume name"), "{e}");
    }
    w.write_ground_truth_volume("beta_00", &v).unwrap();
    let e = w
        .write_ground_truth_volume("beta_00", &v)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/ground_truth/beta_00") && e.contains("already"),
        "{e}"
    );
}
