//! The same input gives the same file, byte for byte.

use mcg_h5::{H5Particles, H5Writer};
use mcg_physics::Volume;
use ndarray::Array3;

use crate::common::*;

#[test]
fn same_set_gives_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let (n, b) = (50, 8);
    let set = full_set(n, 1);
    let images = random_images(n, b, 2);
    let volume = Volume::new(Array3::from_elem((8, 8, 8), 0.25), 5.0).unwrap();
    let mut paths = Vec::new();
    for name in ["first.h5", "second.h5"] {
        let path = dir.path().join(name);
        let mut w = H5Writer::create(&path, b, 5.0, n).unwrap();
        w.write_images(0, images.data.view()).unwrap();
        w.write_ground_truth_volume("beta_00", &volume).unwrap();
        w.finish(&set).unwrap();
        paths.push(path);
        // Let the clock move on, so that any timestamp would differ.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let (a, b_) = (
        H5Particles::open(&paths[0]).unwrap(),
        H5Particles::open(&paths[1]).unwrap(),
    );
    // The tables are equal apart from the image references, which name each file.
    let [sa, sb] = [&a, &b_].map(|h5| {
        let mut set = h5.particle_set().unwrap();
        set.particles.iter_mut().for_each(|p| p.image = None);
        set
    });
    assert!(sa == sb, "the particle tables differ");
    drop((a, b_));
    let bytes: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(bytes[0].len(), bytes[1].len());
    let first_difference = bytes[0].iter().zip(&bytes[1]).position(|(x, y)| x != y);
    assert_eq!(first_difference, None, "the files differ");
}
