//! The container's metadata, rewritten at random (the root attributes a file's size and shape
//! rest on, and the particle columns): opening and reading never panic, every error names the
//! file, and nothing is allocated beyond what the file holds.

use mcg_h5::H5Particles;
use proptest::prelude::*;

use crate::errors::valid_file;

/// Replaces the root attribute `name` of the file at `path` with `value`.
fn set_attr<T: hdf5::H5Type>(path: &std::path::Path, name: &str, value: T) {
    let f = hdf5::File::open_rw(path).unwrap();
    f.delete_attr(name).unwrap();
    f.new_attr::<T>()
        .create(name)
        .unwrap()
        .write_scalar(&value)
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn rewritten_metadata_never_panics_nor_over_allocates(
        count in prop_oneof![0u64..8, Just(1u64 << 30), Just(u64::MAX / 2), any::<u64>()],
        box_size in prop_oneof![0u64..8, Just(1u64 << 20), any::<u64>()],
        pixel_size in prop_oneof![Just(f64::NAN), Just(0.0), Just(-1.0), Just(5.0), any::<f64>()],
        column in 0usize..4,
        value in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), any::<f64>()],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = valid_file(dir.path(), "fuzz.h5", 3);
        set_attr(&path, "count", count);
        set_attr(&path, "box_size", box_size);
        set_attr(&path, "pixel_size", pixel_size);
        {
            let f = hdf5::File::open_rw(&path).unwrap();
            let name = ["defocus_u", "shift_x", "voltage", "scale"][column];
            let ds = f.dataset(&format!("particles/{name}")).unwrap();
            let mut v: Vec<f64> = ds.read_raw().unwrap();
            v[1] = value;
            ds.write_raw(&v).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let (result, largest) = mcg_testdata::alloc::measured(|| {
            H5Particles::open(&path).and_then(|h5| h5.particle_set())
        });
        prop_assert!(largest <= mcg_testdata::alloc::bound(len), "{largest} bytes");
        if let Err(e) = result {
            prop_assert!(e.to_string().contains("fuzz.h5"), "{e}");
        }
    }
}
