//! Write → read gives the same particle set and bit-identical images.

use mcg_formats::{ImageSource, ParticleSet};
use mcg_h5::{H5Particles, H5Writer, write_particle_set};
use ndarray::{Array3, Axis, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::*;

/// Reads random batches (unsorted, with repeats and runs) through the `ImageSource` trait and
/// compares them bit for bit with the originals.
fn check_random_batches(source: &dyn ImageSource, want: &MemImages, seed: u64) {
    let n = want.data.dim().0;
    let b = want.data.dim().1;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut batches: Vec<Vec<usize>> = (0..20)
        .map(|_| {
            let k = rng.random_range(1..=12);
            (0..k).map(|_| rng.random_range(0..n)).collect()
        })
        .collect();
    batches.push(vec![3, 3, 3, 0, 0]);
    batches.push(vec![n - 1, 2, 3, 4, 5, 1, 0]);
    batches.push((0..n).rev().collect());
    for indices in batches {
        let mut out = Array3::from_elem((indices.len(), b, b), 7.0f32);
        source.read_batch(&indices, out.view_mut()).unwrap();
        for (k, &i) in indices.iter().enumerate() {
            assert!(
                bits_equal(out.index_axis(Axis(0), k), want.data.index_axis(Axis(0), i)),
                "image {i} at position {k} of {indices:?}"
            );
        }
    }
}

#[test]
fn full_set_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("particles.h5");
    let (n, b) = (37, 16);
    let set = full_set(n, 1);
    let images = random_images(n, b, 2);
    let mut calls = Vec::new();
    write_particle_set(&path, &set, &images, 5, &mut |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    let expected_calls: Vec<(usize, usize)> = (1..=8).map(|k| ((5 * k).min(n), n)).collect();
    assert_eq!(calls, expected_calls);

    let h5 = H5Particles::open(&path).unwrap();
    assert_eq!(h5.path(), path);
    assert_eq!((h5.len(), h5.box_size(), h5.pixel_size()), (n, b, 5.0));
    assert_eq!(h5.particle_set().unwrap(), as_read_from(&set, &path));

    let source = h5
        .source_images()
        .unwrap()
        .expect("the set named its images");
    assert_eq!(source.base_dir, set.base_dir);
    let want: Vec<_> = set.particles.iter().map(|p| p.image.clone()).collect();
    assert_eq!(source.images, want);

    check_random_batches(&h5, &images, 3);
}

/// Optional fields present on some rows only, optics groups with different extra columns.
fn partial_set(n: usize) -> ParticleSet {
    let mut set = full_set(n, 4);
    for (i, p) in set.particles.iter_mut().enumerate() {
        if i % 2 == 1 {
            p.pose = None;
        }
        if i % 3 == 0 {
            p.class = None;
        }
        if i % 4 == 2 {
            p.image = None;
        }
    }
    set.optics[1].image_size = None;
    set.optics[1].extra = vec![
        ("_rlnOther".into(), "x y".into()),
        ("_rlnImageDimensionality".into(), "2".into()),
    ];
    set
}

#[test]
fn partially_present_fields_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.h5");
    let (n, b) = (11, 4);
    let set = partial_set(n);
    let images = random_images(n, b, 5);
    write_particle_set(&path, &set, &images, 4, &mut |_, _| {}).unwrap();

    let h5 = H5Particles::open(&path).unwrap();
    assert_eq!(h5.particle_set().unwrap(), as_read_from(&set, &path));
    let source = h5.source_images().unwrap().unwrap();
    let want: Vec<_> = set.particles.iter().map(|p| p.image.clone()).collect();
    assert_eq!(source.images, want);
    assert!(source.images.iter().any(Option::is_none));
    check_random_batches(&h5, &images, 6);
}

#[test]
fn set_without_optional_fields_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.h5");
    let (n, b) = (6, 4);
    let mut set = full_set(n, 7);
    for p in &mut set.particles {
        p.pose = None;
        p.class = None;
        p.image = None;
    }
    set.extra.clear();
    for o in &mut set.optics {
        o.extra.clear();
        o.image_size = None;
    }
    let images = random_images(n, b, 8);
    write_particle_set(&path, &set, &images, 100, &mut |_, _| {}).unwrap();

    let h5 = H5Particles::open(&path).unwrap();
    assert_eq!(h5.particle_set().unwrap(), as_read_from(&set, &path));
    assert_eq!(h5.source_images().unwrap(), None);
}

#[test]
fn empty_set_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.h5");
    let set = full_set(0, 9);
    write_particle_set(&path, &set, &random_images(0, 8, 0), 16, &mut |_, _| {}).unwrap();

    let h5 = H5Particles::open(&path).unwrap();
    assert_eq!((h5.len(), h5.box_size()), (0, 8));
    assert_eq!(h5.particle_set().unwrap(), as_read_from(&set, &path));
    let mut out = Array3::zeros((0, 8, 8));
    h5.read_batch(&[], out.view_mut()).unwrap();
}

/// Batches may come in any order and in any memory layout.
#[test]
fn writer_takes_batches_in_any_order_and_layout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("any_order.h5");
    let (n, b) = (10, 6);
    let images = random_images(n, b, 10);
    // Store every image mirrored in x, handing the writer a view with a negative stride.
    let mirrored = images.data.slice(s![.., .., ..;-1]);
    let mut w = H5Writer::create(&path, b, 5.0, n).unwrap();
    w.write_images(7, mirrored.slice(s![7..10, .., ..]))
        .unwrap();
    w.write_images(0, mirrored.slice(s![0..4, .., ..])).unwrap();
    w.write_images(4, mirrored.slice(s![4..7, .., ..])).unwrap();
    w.write_images(2, mirrored.slice(s![2..3, .., ..])).unwrap();
    w.finish(&full_set(n, 11)).unwrap();

    let h5 = H5Particles::open(&path).unwrap();
    let mut out = Array3::zeros((n, b, b));
    h5.read_batch(&(0..n).collect::<Vec<_>>(), out.view_mut())
        .unwrap();
    for i in 0..n {
        assert!(bits_equal(
            out.index_axis(Axis(0), i),
            mirrored.index_axis(Axis(0), i)
        ));
    }
}

/// The reader is shared between threads; concurrent batches all get the right images.
#[test]
fn concurrent_reads_are_correct() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.h5");
    let (n, b) = (64, 8);
    let images = random_images(n, b, 12);
    write_particle_set(&path, &full_set(n, 13), &images, 16, &mut |_, _| {}).unwrap();
    let h5 = H5Particles::open(&path).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (h5, images) = (&h5, &images);
            scope.spawn(move || {
                for round in 0..10 {
                    check_random_batches(h5, images, 100 * t + round);
                }
            });
        }
    });
}
