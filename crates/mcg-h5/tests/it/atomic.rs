//! The target appears only when `finish` succeeds; an abandoned writer leaves nothing.

use mcg_h5::{H5Particles, H5Writer, write_particle_set};
use ndarray::Array3;

use crate::common::*;

#[test]
fn nothing_at_the_target_before_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.h5");
    let n = 4;
    let images = random_images(n, 4, 1);
    let mut w = H5Writer::create(&path, 4, 5.0, n).unwrap();
    w.write_images(0, images.data.view()).unwrap();
    assert!(!path.exists());
    let during = files_in(dir.path());
    assert_eq!(during.len(), 1, "{during:?}");
    assert!(
        mcg_fsio::is_temporary(&during[0]) && during[0].ends_with(".out.h5"),
        "{during:?}"
    );
    w.finish(&full_set(n, 2)).unwrap();
    assert_eq!(files_in(dir.path()), ["out.h5"]);
    H5Particles::open(&path).unwrap();
}

#[test]
fn dropping_an_unfinished_writer_removes_the_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("abandoned.h5");
    let mut w = H5Writer::create(&path, 4, 5.0, 2).unwrap();
    w.write_images(0, Array3::zeros((2, 4, 4)).view()).unwrap();
    assert_eq!(files_in(dir.path()).len(), 1);
    drop(w);
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );
}

#[test]
fn finish_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("again.h5");
    write_particle_set(
        &path,
        &full_set(3, 1),
        &random_images(3, 4, 1),
        2,
        &mut |_, _| {},
    )
    .unwrap();
    let set = full_set(5, 2);
    write_particle_set(&path, &set, &random_images(5, 8, 2), 2, &mut |_, _| {}).unwrap();
    let h5 = H5Particles::open(&path).unwrap();
    assert_eq!(h5.particle_set().unwrap(), as_read_from(&set, &path));
    assert_eq!(files_in(dir.path()), ["again.h5"]);
}
