//! MRC2014 against files written by other programs (cryoDRGN's test data), write → read round
//! trips, and malformed files.
//!
//! The expected values were read from the files independently with NumPy (`np.frombuffer` at
//! offset 1024, the header words unpacked with `struct`); means are NumPy's f64 means of the
//! f32 voxels.

use std::path::{Path, PathBuf};

use mcg_formats::ImageSource;
use mcg_formats::mrc::{self, Endian, MrcKind, MrcMode, MrcStack, MrcStackWriter};
use mcg_formats::stack_source::{StackImages, particle_set_from_stacks, read_stack_list};
use mcg_physics::Volume;
use ndarray::{Array2, Array3, Axis, s};

use crate::shared;

/// Tolerance on means: far below what a decoding or axis-order error would change.
const MEAN_TOL: f64 = 1e-9;

/// What an interop file must read as.
struct Expected {
    file: &'static str,
    /// `(NZ, NY, NX)`.
    shape: (usize, usize, usize),
    voxel_size: Option<f64>,
    is_stack: bool,
    /// `([z, y, x], value)` pairs.
    pixels: &'static [([usize; 3], f32)],
    mean: f64,
}

const CASES: &[Expected] = &[
    Expected {
        file: "hand-vol.mrc",
        shape: (64, 64, 64),
        voxel_size: Some(1.0),
        is_stack: false,
        pixels: &[
            ([63, 32, 32], -0.077_776_89),
            ([21, 35, 27], 0.209_957_15),
            ([0, 0, 0], -0.002_043_978_3),
        ],
        mean: 0.001_029_288_266_988_746_8,
    },
    Expected {
        file: "hand.5.mrcs",
        shape: (5, 64, 64),
        voxel_size: Some(1.0),
        is_stack: true,
        pixels: &[([4, 32, 32], 8.525_052), ([1, 35, 27], 4.862_95)],
        mean: 0.402_932_166_535_229_73,
    },
    Expected {
        file: "spike-vol.mrc",
        shape: (128, 16, 16),
        voxel_size: Some(8.0),
        // ISPG 0 although a map: the header says "stack".
        is_stack: true,
        pixels: &[
            ([127, 8, 8], -0.768_46),
            ([42, 11, 3], 0.377_108_45),
            ([100, 3, 11], 1.249_876_9),
        ],
        mean: -6.965_024_113_014_806e-10,
    },
    Expected {
        file: "relion31.mrcs",
        shape: (5, 256, 256),
        voxel_size: Some(1.0),
        is_stack: true,
        pixels: &[
            ([4, 128, 128], -0.442_734_5),
            ([1, 131, 123], -0.823_617_04),
        ],
        mean: 0.010_766_173_491_712_498,
    },
    Expected {
        file: "empiar_10076_7.mrc",
        shape: (7, 320, 320),
        voxel_size: None,
        // ISPG 1 and MZ = NZ: the header says "volume" although it holds particles.
        is_stack: false,
        pixels: &[([6, 160, 160], -1.411_051_8), ([2, 163, 155], 2.083_937_2)],
        mean: -0.003_434_370_667_618_655,
    },
    Expected {
        file: "toy_projections.mrcs",
        shape: (1000, 30, 30),
        voxel_size: Some(1.0),
        is_stack: true,
        pixels: &[
            ([999, 15, 15], 5.154_116_6),
            ([1, 15, 15], 4.673_609_3),
            ([1, 12, 17], 0.673_400_6),
        ],
        mean: 0.200_158_494_412_207_57,
    },
    Expected {
        file: "toy_datadir/toy_images_a.mrcs",
        shape: (100, 30, 30),
        voxel_size: Some(1.0),
        is_stack: true,
        pixels: &[([99, 15, 15], 2.228_142_3), ([1, 12, 17], 3.211_931_7)],
        mean: 0.200_275_044_438_140_15,
    },
    Expected {
        file: "toy_datadir/toy_images_b.mrcs",
        shape: (900, 30, 30),
        voxel_size: Some(1.0),
        is_stack: true,
        pixels: &[([899, 15, 15], 5.154_116_6), ([300, 18, 10], 3.754_711_6)],
        mean: 0.200_145_544_409_326_2,
    },
];

fn interop(file: &str) -> Option<PathBuf> {
    shared(&format!("interop/cryodrgn/{file}"))
}

fn mean(data: &Array3<f32>) -> f64 {
    data.iter().map(|&v| f64::from(v)).sum::<f64>() / data.len() as f64
}

#[test]
fn every_interop_mrc_file_reads_to_known_values() {
    for case in CASES {
        let Some(path) = interop(case.file) else {
            return;
        };
        let got = mrc::read(&path).unwrap_or_else(|e| panic!("{e}"));
        let h = &got.header;
        let file = case.file;
        assert_eq!(got.data.dim(), case.shape, "{file}");
        assert_eq!(h.shape(), case.shape, "{file}");
        assert_eq!(h.mode, MrcMode::Float32, "{file}");
        assert_eq!(h.endian, Endian::Little, "{file}");
        assert_eq!(h.voxel_size(), case.voxel_size, "{file}");
        assert_eq!(h.is_stack(), case.is_stack, "{file}");
        for &(index, value) in case.pixels {
            assert_eq!(got.data[index], value, "{file} at {index:?}");
        }
        let m = mean(&got.data);
        assert!(
            (m - case.mean).abs() < MEAN_TOL,
            "{file}: mean {m}, expected {}",
            case.mean
        );

        // The lazy reader gives the same images as the whole-file reader.
        let stack = MrcStack::open(&path).unwrap();
        assert_eq!(stack.len(), case.shape.0, "{file}");
        assert_eq!(stack.image_shape(), (case.shape.1, case.shape.2), "{file}");
        let mut image = Array2::zeros(stack.image_shape());
        for &([z, ..], _) in case.pixels {
            stack.read_into(z, image.view_mut()).unwrap();
            assert_eq!(image, got.data.index_axis(Axis(0), z), "{file} image {z}");
        }
        assert_eq!(&mrc::read_header(&path).unwrap(), h, "{file}");
    }
}

#[test]
fn sloppy_and_unusual_headers_are_described_as_found() {
    let Some(hand5) = interop("hand.5.mrcs") else {
        return;
    };
    let h = mrc::read_header(&hand5).unwrap();
    assert_eq!((h.map, h.machine_stamp, h.nversion), ([0; 4], [0; 4], 0));
    assert_eq!((h.ispg, h.mz), (0, 5));

    let empiar = interop("empiar_10076_7.mrc").unwrap();
    let h = mrc::read_header(&empiar).unwrap();
    assert_eq!(h.cell, [0.0; 3]);
    assert_eq!((&h.map, h.nversion, h.nlabl), (b"MAP ", 20141, 1));
    assert!(
        h.labels[0].starts_with("Created by mrcfile.py"),
        "{:?}",
        h.labels
    );

    let toy = interop("toy_projections.mrcs").unwrap();
    let h = mrc::read_header(&toy).unwrap();
    assert_eq!((h.mx, h.my, h.mz, h.cell), (1, 1, 1, [1.0; 3]));

    let spike = interop("spike-vol.mrc").unwrap();
    let h = mrc::read_header(&spike).unwrap();
    assert_eq!((h.nx, h.ny, h.nz, h.mz), (16, 16, 128, 128));
}

#[test]
fn volumes_read_as_volumes_and_other_shapes_do_not() {
    let Some(hand) = interop("hand-vol.mrc") else {
        return;
    };
    let volume = mrc::read_volume(&hand, None).unwrap();
    assert_eq!((volume.box_size(), volume.apix()), (64, 1.0));
    assert_eq!(volume.data()[[63, 32, 32]], -0.077_776_89);
    let volume = mrc::read_volume(&hand, Some(4.25)).unwrap();
    assert_eq!(volume.apix(), 4.25);

    let spike = interop("spike-vol.mrc").unwrap();
    let err = mrc::read_volume(&spike, Some(1.0)).unwrap_err().to_string();
    assert!(
        err.contains("spike-vol.mrc") && err.contains("16×16×128"),
        "{err}"
    );

    let empiar = interop("empiar_10076_7.mrc").unwrap();
    let err = mrc::read_volume(&empiar, None).unwrap_err().to_string();
    assert!(
        err.contains("empiar_10076_7.mrc") && err.contains("320×320×7"),
        "{err}"
    );
}

#[test]
fn volume_without_voxel_size_needs_an_override() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.mrc");
    let data = pseudo_random((4, 4, 4), 3);
    mrc::write_array(&path, data.view(), 2.0, MrcKind::Volume).unwrap();
    // Zero the cell length along x (bytes 40..44), as empiar_10076_7.mrc has it.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40..44].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let err = mrc::read_volume(&path, None).unwrap_err().to_string();
    assert!(err.contains("v.mrc") && err.contains("CELLA/MX"), "{err}");
    let volume = mrc::read_volume(&path, Some(2.0)).unwrap();
    assert_eq!(volume.data(), &data);
}

#[test]
fn stack_lists_and_stack_sources_over_interop_stacks() {
    let Some(list) = interop("toy_projections.txt") else {
        return;
    };
    let paths = read_stack_list(&list).unwrap();
    assert_eq!(paths, vec![interop("toy_projections.mrcs").unwrap()]);
    let set = particle_set_from_stacks(&paths, None).unwrap();
    assert_eq!((set.len(), set.optics[0].pixel_size), (1000, 1.0));
    let src = StackImages::open(&set).unwrap();
    assert_eq!((src.len(), src.box_size()), (1000, 30));
    let mut out = Array3::zeros((2, 30, 30));
    src.read_batch(&[999, 1], out.view_mut()).unwrap();
    assert_eq!(out[[0, 15, 15]], 5.154_116_6);
    assert_eq!(out[[1, 12, 17]], 0.673_400_6);

    let a = interop("toy_datadir/toy_images_a.mrcs").unwrap();
    let b = interop("toy_datadir/toy_images_b.mrcs").unwrap();
    let set = particle_set_from_stacks(&[a, b], Some(2.5)).unwrap();
    assert_eq!((set.len(), set.optics[0].pixel_size), (1000, 2.5));
    let src = StackImages::open(&set).unwrap();
    assert_eq!(src.pixel_size(), 2.5);
    src.read_batch(&[999, 101], out.view_mut()).unwrap();
    assert_eq!(out[[0, 15, 15]], 5.154_116_6); // b image 899
    let b_image_1 = MrcStack::open(&interop("toy_datadir/toy_images_b.mrcs").unwrap()).unwrap();
    let mut expected = Array2::zeros((30, 30));
    b_image_1.read_into(1, expected.view_mut()).unwrap();
    assert_eq!(out.index_axis(Axis(0), 1), expected);
}

// ---------------------------------------------------------------------------------------------
// Round trips.

/// Deterministic values spread over several orders of magnitude, with a non-zero mean.
fn pseudo_random(shape: (usize, usize, usize), seed: u64) -> Array3<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array3::from_shape_simple_fn(shape, || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let unit = (state >> 11) as f64 / (1u64 << 53) as f64;
        (3.0 + 10.0 * (unit - 0.5) * (1.0 + 100.0 * unit.powi(8))) as f32
    })
}

/// Min, max, mean and standard deviation from the mean, directly in f64.
fn direct_stats(data: &Array3<f32>) -> (f64, f64, f64, f64) {
    let values: Vec<f64> = data.iter().map(|&v| f64::from(v)).collect();
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, max, mean, var.sqrt())
}

fn assert_header_stats(path: &Path, data: &Array3<f32>) {
    let h = mrc::read_header(path).unwrap();
    let (min, max, mean, rms) = direct_stats(data);
    assert_eq!(f64::from(h.dmin), min);
    assert_eq!(f64::from(h.dmax), max);
    let close = |a: f32, b: f64| (f64::from(a) - b).abs() <= 1e-6 * b.abs().max(1.0);
    assert!(close(h.dmean, mean), "DMEAN {} vs {mean}", h.dmean);
    assert!(close(h.rms, rms), "RMS {} vs {rms}", h.rms);
}

fn assert_bit_exact(got: &Array3<f32>, want: &Array3<f32>) {
    assert_eq!(got.dim(), want.dim());
    assert!(
        got.iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "pixels differ"
    );
}

#[test]
fn written_volumes_read_back_bit_exact_with_conforming_headers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vol.mrc");
    let data = pseudo_random((8, 8, 8), 1);
    let volume = Volume::new(data.clone(), 5.0).unwrap();
    mrc::write_volume(&path, &volume).unwrap();

    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 1024 + 8 * 8 * 8 * 4);
    assert_eq!(&bytes[208..212], b"MAP ");
    assert_eq!(&bytes[212..216], &[0x44, 0x44, 0, 0]);
    assert_eq!(&bytes[12..16], &2i32.to_le_bytes());

    let h = mrc::read_header(&path).unwrap();
    assert_eq!((h.nx, h.ny, h.nz, h.mx, h.my, h.mz), (8, 8, 8, 8, 8, 8));
    assert_eq!((h.ispg, h.nversion, h.nsymbt), (1, 20140, 0));
    assert_eq!((h.mapc, h.mapr, h.maps), (1, 2, 3));
    assert_eq!((h.cell, h.cell_angles), ([40.0; 3], [90.0; 3]));
    assert_eq!(h.voxel_size(), Some(5.0));
    assert!(!h.is_stack());
    assert_eq!(h.nlabl, 1);
    assert_eq!(
        h.labels,
        vec![format!("multicryogan {}", env!("CARGO_PKG_VERSION"))]
    );
    assert_header_stats(&path, &data);

    let back = mrc::read_volume(&path, None).unwrap();
    assert_eq!(back.apix(), 5.0);
    assert_bit_exact(back.data(), &data);
    // Nothing but the file itself is left in the folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn written_stacks_read_back_bit_exact_with_conforming_headers() {
    let dir = tempfile::tempdir().unwrap();
    let data = pseudo_random((37, 6, 10), 2);

    let whole = dir.path().join("whole.mrcs");
    mrc::write_array(&whole, data.view(), 1.5, MrcKind::Stack).unwrap();
    let streamed = dir.path().join("streamed.mrcs");
    let mut writer = MrcStackWriter::create(&streamed, 6, 10, 1.5).unwrap();
    for start in (0..37).step_by(5) {
        let end = (start + 5).min(37);
        writer.append(data.slice(s![start..end, .., ..])).unwrap();
    }
    assert!(!streamed.exists());
    writer.finish().unwrap();

    for path in [&whole, &streamed] {
        let got = mrc::read(path).unwrap();
        let h = &got.header;
        assert_eq!((h.nx, h.ny, h.nz, h.mx, h.my, h.mz), (10, 6, 37, 10, 6, 1));
        assert_eq!((h.ispg, h.nversion, &h.map), (0, 20140, b"MAP "));
        assert_eq!(h.cell, [15.0, 9.0, 1.5]);
        assert_eq!(h.voxel_size(), Some(1.5));
        assert!(h.is_stack());
        assert_bit_exact(&got.data, &data);
        assert_header_stats(path, &data);
    }
    // Streaming and writing at once give the same bytes.
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&streamed).unwrap()
    );
}

#[test]
fn writing_replaces_an_existing_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.mrcs");
    let big = pseudo_random((20, 4, 4), 4);
    mrc::write_array(&path, big.view(), 1.0, MrcKind::Stack).unwrap();
    let small = pseudo_random((2, 4, 4), 5);
    mrc::write_array(&path, small.view(), 1.0, MrcKind::Stack).unwrap();
    assert_bit_exact(&mrc::read(&path).unwrap().data, &small);
}

// ---------------------------------------------------------------------------------------------
// Malformed files.

/// A copy of `relion31.mrcs` (5 images of 256²) changed by `edit`, in a temporary folder.
fn broken_copy(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Option<PathBuf> {
    let mut bytes = std::fs::read(interop("relion31.mrcs")?).unwrap();
    edit(&mut bytes);
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    Some(path)
}

fn assert_error(path: &Path, needles: &[&str]) {
    let name = path.file_name().unwrap().to_str().unwrap();
    for err in [
        mrc::read(path).map(|_| ()).unwrap_err().to_string(),
        mrc::read_header(path).map(|_| ()).unwrap_err().to_string(),
        MrcStack::open(path).map(|_| ()).unwrap_err().to_string(),
    ] {
        assert!(err.contains(name), "{err}");
        for needle in needles {
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }
}

#[test]
fn truncated_stack_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = broken_copy(dir.path(), "truncated.mrcs", |b| b.truncate(b.len() - 100))
    else {
        return;
    };
    assert_error(
        &path,
        &["file length", "found 1311644 bytes", "expected 1311744"],
    );
    let Some(path) = broken_copy(dir.path(), "headless.mrcs", |b| b.truncate(500)) else {
        return;
    };
    assert_error(&path, &["file length", "found 500 bytes"]);
}

#[test]
fn header_claiming_more_images_than_present_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = broken_copy(dir.path(), "liar.mrcs", |b| {
        b[8..12].copy_from_slice(&6i32.to_le_bytes());
    }) else {
        return;
    };
    let expected = (1024 + 6 * 256 * 256 * 4).to_string();
    assert_error(
        &path,
        &["file length", "found 1311744 bytes", &expected, "256×256×6"],
    );
}

#[test]
fn bad_mode_and_bad_dimensions_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let Some(path) = broken_copy(dir.path(), "mode3.mrcs", |b| {
        b[12..16].copy_from_slice(&3i32.to_le_bytes());
    }) else {
        return;
    };
    assert_error(&path, &["MODE", "found 3"]);
    let path = broken_copy(dir.path(), "mode7.mrcs", |b| {
        b[12..16].copy_from_slice(&7i32.to_le_bytes());
    })
    .unwrap();
    assert_error(&path, &["MODE", "found 7"]);
    let path = broken_copy(dir.path(), "negative.mrcs", |b| {
        b[4..8].copy_from_slice(&(-256i32).to_le_bytes());
    })
    .unwrap();
    assert_error(&path, &["NY", "found -256"]);
    let path = broken_copy(dir.path(), "zero.mrcs", |b| b[8..12].fill(0)).unwrap();
    assert_error(&path, &["NZ", "found 0"]);
}

#[test]
fn index_past_the_end_is_an_error_naming_file_index_and_count() {
    let Some(path) = interop("relion31.mrcs") else {
        return;
    };
    let stack = MrcStack::open(&path).unwrap();
    let mut image = Array2::zeros((256, 256));
    stack.read_into(4, image.view_mut()).unwrap();
    let err = stack
        .read_into(5, image.view_mut())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("relion31.mrcs") && err.contains("index 5") && err.contains("5 images"),
        "{err}"
    );
    let mut range = Array3::zeros((2, 256, 256));
    let err = stack
        .read_range(4, range.view_mut())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("relion31.mrcs") && err.contains("4..6"),
        "{err}"
    );
    let err = stack.read_into(usize::MAX, image.view_mut()).unwrap_err();
    assert!(err.to_string().contains("5 images"), "{err}");
}
