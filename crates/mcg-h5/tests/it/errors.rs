//! Every error names the file and the object at fault.

use std::path::Path;

use mcg_formats::ImageSource;
use mcg_h5::{H5Particles, H5Writer, write_particle_set};
use ndarray::Array3;

use crate::common::*;

/// A valid file of `n` images of 4² pixels.
pub fn valid_file(dir: &Path, name: &str, n: usize) -> std::path::PathBuf {
    let path = dir.join(name);
    write_particle_set(
        &path,
        &full_set(n, 1),
        &random_images(n, 4, 2),
        8,
        &mut |_, _| {},
    )
    .unwrap();
    path
}

/// The error message of opening `path`.
fn open_error(path: &Path) -> String {
    H5Particles::open(path).unwrap_err().to_string()
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.h5");
    let e = open_error(&path);
    assert!(e.contains("nowhere.h5") && e.contains("open"), "{e}");
}

#[test]
fn not_an_hdf5_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("particles.star");
    std::fs::write(
        &path,
        "data_particles\n\nloop_\n_rlnImageName #1\n".repeat(100),
    )
    .unwrap();
    let e = open_error(&path);
    assert!(
        e.contains("particles.star") && e.contains("not an HDF5 file"),
        "{e}"
    );
}

#[test]
fn hdf5_file_without_format_attribute() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.h5");
    let f = hdf5::File::create(&path).unwrap();
    f.new_dataset::<f32>()
        .shape((2, 4, 4))
        .create("images")
        .unwrap();
    drop(f);
    let e = open_error(&path);
    assert!(
        e.contains("other.h5") && e.contains("`format`") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn wrong_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "wrong_format.h5", 3);
    let f = hdf5::File::open_rw(&path).unwrap();
    f.delete_attr("format").unwrap();
    let v: hdf5::types::VarLenUnicode = "cryodrgn".parse().unwrap();
    f.new_attr::<hdf5::types::VarLenUnicode>()
        .create("format")
        .unwrap()
        .write_scalar(&v)
        .unwrap();
    drop(f);
    let e = open_error(&path);
    assert!(
        e.contains("wrong_format.h5") && e.contains("\"cryodrgn\""),
        "{e}"
    );
}

#[test]
fn wrong_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "v2.h5", 3);
    let f = hdf5::File::open_rw(&path).unwrap();
    f.delete_attr("format_version").unwrap();
    f.new_attr::<u32>()
        .create("format_version")
        .unwrap()
        .write_scalar(&2u32)
        .unwrap();
    drop(f);
    let e = open_error(&path);
    assert!(
        e.contains("v2.h5") && e.contains("`format_version`") && e.contains("is 2"),
        "{e}"
    );
}

#[test]
fn missing_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "no_defocus.h5", 3);
    let f = hdf5::File::open_rw(&path).unwrap();
    f.group("particles").unwrap().unlink("defocus_u").unwrap();
    drop(f);
    let e = open_error(&path);
    assert!(
        e.contains("no_defocus.h5") && e.contains("/particles/defocus_u: missing dataset"),
        "{e}"
    );
}

#[test]
fn image_shape_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "count.h5", 3);
    let f = hdf5::File::open_rw(&path).unwrap();
    f.delete_attr("count").unwrap();
    f.new_attr::<u64>()
        .create("count")
        .unwrap()
        .write_scalar(&5u64)
        .unwrap();
    drop(f);
    let e = open_error(&path);
    assert!(
        e.contains("count.h5") && e.contains("/images") && e.contains("[3, 4, 4]"),
        "{e}"
    );
}

/// A count the file cannot hold (10⁹ particles in a few kilobytes) is refused before any
/// column is read, naming the attribute; nothing is allocated for it.
#[test]
fn a_count_beyond_the_file_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "huge.h5", 3);
    let f = hdf5::File::open_rw(&path).unwrap();
    f.delete_attr("count").unwrap();
    f.new_attr::<u64>()
        .create("count")
        .unwrap()
        .write_scalar(&1_000_000_000u64)
        .unwrap();
    drop(f);
    let e = open_error(&path);
    assert!(
        e.contains("huge.h5")
            && e.contains("count")
            && e.contains("1000000000")
            && e.contains("can hold"),
        "{e}"
    );
}

#[test]
fn column_length_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "short.h5", 3);
    let f = hdf5::File::open_rw(&path).unwrap();
    let g = f.group("particles").unwrap();
    g.unlink("tilt").unwrap();
    g.new_dataset_builder()
        .with_data(&[1.0f64, 2.0])
        .create("tilt")
        .unwrap();
    drop((g, f));
    let e = open_error(&path);
    assert!(
        e.contains("short.h5") && e.contains("/particles/tilt") && e.contains("expected [3]"),
        "{e}"
    );
}

#[test]
fn index_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "three.h5", 3);
    let h5 = H5Particles::open(&path).unwrap();
    let mut out = Array3::zeros((2, 4, 4));
    let e = h5
        .read_batch(&[0, 3], out.view_mut())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("three.h5") && e.contains("index 3 is past the end"),
        "{e}"
    );
    let mut wrong = Array3::zeros((2, 5, 5));
    let e = h5
        .read_batch(&[0, 1], wrong.view_mut())
        .unwrap_err()
        .to_string();
    assert!(e.contains("three.h5") && e.contains("output buffer"), "{e}");
}

#[test]
fn writer_refuses_bad_batches_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.h5");
    let mut w = H5Writer::create(&path, 4, 5.0, 3).unwrap();
    let e = w
        .write_images(0, Array3::zeros((1, 5, 5)).view())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.h5") && e.contains("[1, 4, 4]"), "{e}");
    let e = w
        .write_images(2, Array3::zeros((2, 4, 4)).view())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.h5") && e.contains("past the end"), "{e}");

    // An image never written.
    w.write_images(0, Array3::zeros((2, 4, 4)).view()).unwrap();
    let e = w.finish(&full_set(3, 1)).unwrap_err().to_string();
    assert!(
        e.contains("bad.h5") && e.contains("image 2 was never written"),
        "{e}"
    );

    // A table of the wrong length.
    let mut w = H5Writer::create(&path, 4, 5.0, 3).unwrap();
    w.write_images(0, Array3::zeros((3, 4, 4)).view()).unwrap();
    let e = w.finish(&full_set(4, 1)).unwrap_err().to_string();
    assert!(e.contains("bad.h5") && e.contains("4 particles"), "{e}");

    // A particle pointing past the optics groups, and an extra column too short.
    let mut set = full_set(3, 1);
    set.particles[1].optics_group = 2;
    let mut w = H5Writer::create(&path, 4, 5.0, 3).unwrap();
    w.write_images(0, Array3::zeros((3, 4, 4)).view()).unwrap();
    let e = w.finish(&set).unwrap_err().to_string();
    assert!(e.contains("particle 1 refers to optics group 2"), "{e}");
    let mut set = full_set(3, 1);
    set.extra[1].1.pop();
    let mut w = H5Writer::create(&path, 4, 5.0, 3).unwrap();
    w.write_images(0, Array3::zeros((3, 4, 4)).view()).unwrap();
    let e = w.finish(&set).unwrap_err().to_string();
    assert!(
        e.contains("_mcgBeta") && e.contains("2 values, expected 3"),
        "{e}"
    );

    // Nothing was left behind.
    assert!(
        files_in(dir.path()).is_empty(),
        "{:?}",
        files_in(dir.path())
    );

    let e = H5Writer::create(&path, 4, 0.0, 3).unwrap_err().to_string();
    assert!(e.contains("bad.h5") && e.contains("pixel size"), "{e}");
    let e = write_particle_set(
        &path,
        &full_set(3, 1),
        &random_images(2, 4, 0),
        8,
        &mut |_, _| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad.h5") && e.contains("2 images"), "{e}");
}

#[test]
fn errors_convert_to_format_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.txt");
    std::fs::write(&path, "not hdf5").unwrap();
    let e: mcg_formats::FormatError = H5Particles::open(&path).unwrap_err().into();
    assert!(
        matches!(e, mcg_formats::FormatError::Invalid { ref path, .. } if path.ends_with("plain.txt")),
        "{e}"
    );
}

/// The container is held to the same checks of its values as STAR and `.cs` files (one
/// validation of a particle set, whatever the format): a NaN defocus and a pixel size of 0 are
/// refused, naming the particle or the attribute.
#[test]
fn non_finite_defocus_and_zero_pixel_size_are_refused_like_in_star_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "nan.h5", 3);
    let f = hdf5::File::open_rw(&path).unwrap();
    let ds = f.dataset("particles/defocus_u").unwrap();
    let mut v: Vec<f64> = ds.read_raw().unwrap();
    v[1] = f64::NAN;
    ds.write_raw(&v).unwrap();
    drop((ds, f));
    let e = H5Particles::open(&path)
        .unwrap()
        .particle_set()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nan.h5") && e.contains("particle 2: defocus U") && e.contains("NaN"),
        "{e}"
    );

    let path = valid_file(dir.path(), "zero.h5", 3);
    let f = hdf5::File::open_rw(&path).unwrap();
    f.delete_attr("pixel_size").unwrap();
    f.new_attr::<f64>()
        .create("pixel_size")
        .unwrap()
        .write_scalar(&0.0f64)
        .unwrap();
    drop(f);
    let e = open_error(&path);
    assert!(
        e.contains("zero.h5") && e.contains("pixel_size") && e.contains("above 0"),
        "{e}"
    );
}
