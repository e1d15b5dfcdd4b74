//! Tests of the MRC reader and writer.

use super::*;
use ndarray::{Array2, Axis, s};
use proptest::prelude::*;

/// A header built word by word, independently of `encode_header`.
fn raw_header(endian: Endian, dims: [i32; 3], mode: i32, stamp: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_LEN];
    let mut put = |offset: usize, v: i32| {
        let b = match endian {
            Endian::Little => v.to_le_bytes(),
            Endian::Big => v.to_be_bytes(),
        };
        h[offset..offset + 4].copy_from_slice(&b);
    };
    put(0, dims[0]);
    put(4, dims[1]);
    put(8, dims[2]);
    put(12, mode);
    put(28, dims[0]);
    put(32, dims[1]);
    put(36, dims[2]);
    put(40, (2.5f32 * dims[0] as f32).to_bits() as i32);
    h[212..216].copy_from_slice(&stamp);
    h
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Values exactly representable in every mode, and their encodings.
fn encode_values(mode: i32, endian: Endian, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for &v in values {
        let le: Vec<u8> = match mode {
            0 => vec![(v as i8) as u8],
            1 => (v as i16).to_le_bytes().to_vec(),
            2 => v.to_le_bytes().to_vec(),
            6 => (v as u16).to_le_bytes().to_vec(),
            // Half precision of small integers: exponent and mantissa by hand.
            12 => f32_to_f16_exact(v).to_le_bytes().to_vec(),
            _ => unreachable!(),
        };
        let mut word = le;
        if endian == Endian::Big {
            word.reverse();
        }
        out.extend(word);
    }
    out
}

/// Half-precision bits of a value exactly representable as a normal half (or zero).
fn f32_to_f16_exact(v: f32) -> u16 {
    if v == 0.0 {
        return if v.is_sign_negative() { 0x8000 } else { 0 };
    }
    let bits = v.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mantissa = ((bits >> 13) & 0x3ff) as u16;
    assert!(
        (1..31).contains(&exponent) && bits & 0x1fff == 0,
        "{v} is not a half"
    );
    sign | ((exponent as u16) << 10) | mantissa
}

#[test]
fn a_map_with_a_non_finite_voxel_is_refused_naming_the_voxel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.mrc");
    let n = 4;
    let volume = Volume::new(ndarray::Array3::<f32>::ones((n, n, n)), 2.0).unwrap();
    write_volume(&path, &volume).unwrap();
    assert!(read_volume(&path, None).is_ok());
    // Voxel (x 1, y 2, z 3): index (3·4 + 2)·4 + 1 = 57 of the float32 data after the header.
    let mut bytes = std::fs::read(&path).unwrap();
    let extended = u32::from_le_bytes(bytes[92..96].try_into().unwrap()) as usize;
    let at = HEADER_LEN + extended + 57 * 4;
    for bad in [f32::NAN, f32::INFINITY] {
        bytes[at..at + 4].copy_from_slice(&bad.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = read_volume(&path, None).unwrap_err().to_string();
        assert!(
            err.contains("map.mrc") && err.contains("(x 1, y 2, z 3)"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn every_mode_and_byte_order_reads_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    // 3 columns × 2 rows × 2 sections, with values distinct along every axis.
    let values: [f32; 12] = [0., 1., -2., 3., 4., 5., 6., 7., 8., 9., 10., 11.];
    for (mode, expected) in [
        (0, values),
        (1, values.map(|v| v * -100.0)),
        (2, values.map(|v| v * 0.25 - 1.0)),
        (6, values.map(|v| v.abs() * 1000.0 + 40_000.0)),
        (12, values.map(|v| v * 0.5)),
    ] {
        for (endian, stamp) in [
            (Endian::Little, [0x44, 0x44, 0, 0]),
            (Endian::Big, [0x11, 0x11, 0, 0]),
            (Endian::Little, [0; 4]),
            (Endian::Big, [0; 4]),
            (Endian::Big, [0x44, 0x41, 0, 0]), // a lying stamp
        ] {
            let mut bytes = raw_header(endian, [3, 2, 2], mode, stamp);
            bytes.extend(encode_values(mode, endian, &expected));
            let path = write_file(dir.path(), &format!("m{mode}.mrc"), &bytes);
            let got = read(&path).unwrap();
            let case = format!("mode {mode} {endian:?} stamp {stamp:?}");
            assert_eq!(got.header.endian, endian, "{case}");
            assert_eq!(got.header.mode.code(), mode, "{case}");
            assert_eq!(got.data.dim(), (2, 2, 3), "{case}");
            assert_eq!(got.data.as_slice().unwrap(), &expected[..], "{case}");
            // x fastest: [z][y][x] = values[(z·2 + y)·3 + x].
            assert_eq!(got.data[[1, 0, 2]], expected[8], "{case}");
            assert_eq!(got.header.voxel_size(), Some(2.5), "{case}");
        }
    }
}

#[test]
fn int8_is_signed() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = raw_header(Endian::Little, [4, 1, 1], 0, [0x44, 0x44, 0, 0]);
    bytes.extend([0x00, 0x7f, 0x80, 0xff]);
    let path = write_file(dir.path(), "i8.mrc", &bytes);
    let got = read(&path).unwrap();
    assert_eq!(got.data.as_slice().unwrap(), &[0.0, 127.0, -128.0, -1.0]);
}

#[test]
fn half_precision_special_values() {
    let cases: [(u16, f32); 10] = [
        (0x0000, 0.0),
        (0x3c00, 1.0),
        (0xc000, -2.0),
        (0x3555, 0.333_251_95),
        (0x7bff, 65504.0),
        (0x0400, 6.103_515_6e-5),
        (0x0001, 5.960_464_5e-8),
        (0x03ff, 6.097_555_e-5),
        (0x7c00, f32::INFINITY),
        (0xfc00, f32::NEG_INFINITY),
    ];
    for (bits, value) in cases {
        assert_eq!(f16_to_f32(bits), value, "{bits:#06x}");
    }
    assert!(f16_to_f32(0x7e00).is_nan());
    assert!(f16_to_f32(0x8000).is_sign_negative() && f16_to_f32(0x8000) == 0.0);
    // Every finite positive half, in bit order, is strictly larger than the one before, and
    // negation flips the sign bit only.
    for bits in 1..0x7c00u16 {
        assert!(f16_to_f32(bits) > f16_to_f32(bits - 1), "{bits:#06x}");
        assert_eq!(f16_to_f32(bits | 0x8000), -f16_to_f32(bits));
    }
}

#[test]
fn extended_header_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = raw_header(Endian::Little, [2, 1, 1], 2, [0x44, 0x44, 0, 0]);
    bytes[92..96].copy_from_slice(&8i32.to_le_bytes());
    bytes.extend([0xAA; 8]);
    bytes.extend(3.5f32.to_le_bytes());
    bytes.extend((-1.25f32).to_le_bytes());
    let path = write_file(dir.path(), "ext.mrc", &bytes);
    let got = read(&path).unwrap();
    assert_eq!(got.header.data_offset(), 1032);
    assert_eq!(got.data.as_slice().unwrap(), &[3.5, -1.25]);
}

#[test]
fn voxel_size_of_sloppy_headers() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = raw_header(Endian::Little, [2, 2, 2], 2, [0; 4]);
    bytes.extend([0u8; 32]);
    let path = write_file(dir.path(), "v.mrc", &bytes);
    let mut h = read_header(&path).unwrap();
    assert_eq!(h.voxel_size(), Some(2.5));
    h.mx = 0;
    assert_eq!(h.voxel_size(), None);
    h.mx = 1;
    h.cell[0] = 1.0;
    assert_eq!(h.voxel_size(), Some(1.0));
    h.cell[0] = 0.0;
    assert_eq!(h.voxel_size(), None);
    h.cell[0] = f32::NAN;
    assert_eq!(h.voxel_size(), None);
}

#[test]
fn stack_heuristics() {
    let base = output_header(4, 4, 10, 1.0, MrcKind::Stack, &Stats::new());
    assert!(base.is_stack());
    let volume = output_header(4, 4, 4, 1.0, MrcKind::Volume, &Stats::new());
    assert!(!volume.is_stack());
    let relion_style = MrcHeader {
        ispg: 1,
        mz: 1,
        ..base.clone()
    };
    assert!(relion_style.is_stack());
    let volume_stack = MrcHeader {
        ispg: 401,
        ..base.clone()
    };
    assert!(!volume_stack.is_stack());
    let sloppy_volume = MrcHeader {
        ispg: 1,
        mz: 0,
        ..base
    };
    assert!(!sloppy_volume.is_stack());
}

#[test]
fn axis_permutation_is_applied_to_volumes() {
    let dir = tempfile::tempdir().unwrap();
    // Columns hold z, rows x, sections y (MAPC 3, MAPR 1, MAPS 2):
    // file[s][r][c] = V[z = c][y = s][x = r].
    let n = 4;
    let volume = Array3::from_shape_fn((n, n, n), |(z, y, x)| (100 * z + 10 * y + x) as f32);
    let file_order = Array3::from_shape_fn((n, n, n), |(s, r, c)| volume[[c, s, r]]);
    let mut bytes = raw_header(Endian::Little, [4, 4, 4], 2, [0x44, 0x44, 0, 0]);
    for (offset, v) in [(64, 3i32), (68, 1), (72, 2)] {
        bytes[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
    }
    for v in file_order.iter() {
        bytes.extend(v.to_le_bytes());
    }
    let path = write_file(dir.path(), "perm.mrc", &bytes);
    let got = read_volume(&path, None).unwrap();
    assert_eq!(got.data(), &volume);
    assert_eq!(got.apix(), 2.5);
}

#[test]
fn header_encoding_round_trips() {
    let mut stats = Stats::new();
    stats.push(&[1.0, 2.0, 4.0]);
    for endian in [Endian::Little, Endian::Big] {
        let header = MrcHeader {
            endian,
            nsymbt: 0,
            origin: [1.0, -2.0, 3.5],
            ..output_header(6, 8, 3, 1.5, MrcKind::Stack, &stats)
        };
        let bytes = encode_header(&header);
        let len = HEADER_LEN as u64 + 6 * 8 * 3 * 4;
        let parsed = parse_header(&bytes, len, Path::new("x.mrcs")).unwrap();
        assert_eq!(parsed, header);
    }
    assert!((stats.rms() - (14.0f64 / 9.0).sqrt()).abs() < 1e-15);
}

#[test]
fn streamed_statistics_equal_two_pass() {
    let values: Vec<f32> = (0..10_007)
        .map(|i| 1e4 + ((i * 7919) % 1013) as f32 * 0.01)
        .collect();
    let mut stats = Stats::new();
    for chunk in values.chunks(333) {
        stats.push(chunk);
    }
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!((stats.mean - mean).abs() <= 1e-12 * mean.abs());
    assert!((stats.rms() - var.sqrt()).abs() <= 1e-9 * var.sqrt());
    assert_eq!(
        stats.min,
        values.iter().copied().fold(f32::INFINITY, f32::min)
    );
    assert_eq!(
        stats.max,
        values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    );
}

#[test]
fn stack_reads_match_whole_file_and_views() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.mrcs");
    let data = Array3::from_shape_fn((7, 3, 5), |(i, y, x)| (i * 100 + y * 10 + x) as f32);
    let mut w = MrcStackWriter::create(&path, 3, 5, 1.5).unwrap();
    w.append(data.slice(s![..4, .., ..])).unwrap();
    // A non-contiguous view appends in logical order too.
    let transposed = data
        .slice(s![4.., .., ..])
        .permuted_axes([0, 2, 1])
        .as_standard_layout()
        .into_owned();
    let view = transposed.view().permuted_axes([0, 2, 1]);
    assert!(view.as_slice().is_none());
    w.append(view).unwrap();
    assert_eq!(w.len(), 7);
    w.finish().unwrap();
    let stack = MrcStack::open(&path).unwrap();
    assert_eq!((stack.len(), stack.image_shape()), (7, (3, 5)));
    let mut image = Array2::zeros((3, 5));
    stack.read_into(6, image.view_mut()).unwrap();
    assert_eq!(image, data.index_axis(Axis(0), 6));
    // Into a transposed (non-standard) view.
    let mut t = Array2::zeros((5, 3));
    stack.read_into(2, t.view_mut().reversed_axes()).unwrap();
    assert_eq!(t.t(), data.index_axis(Axis(0), 2));
    let mut range = Array3::zeros((3, 3, 5));
    stack.read_range(4, range.view_mut()).unwrap();
    assert_eq!(range, data.slice(s![4..7, .., ..]));
    let err = stack
        .read_range(5, range.view_mut())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("s.mrcs") && err.contains("5..8") && err.contains("7 images"),
        "{err}"
    );
    let err = stack
        .read_into(0, Array2::zeros((5, 3)).view_mut())
        .unwrap_err();
    assert!(err.to_string().contains("output shape"), "{err}");
}

#[test]
fn unfinished_or_empty_writers_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.mrcs");
    {
        let mut w = MrcStackWriter::create(&path, 2, 2, 1.0).unwrap();
        w.append(Array3::zeros((3, 2, 2)).view()).unwrap();
        assert!(!path.exists(), "nothing under the final name before finish");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let w = MrcStackWriter::create(&path, 2, 2, 1.0).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(err.contains("NZ"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let mut w = MrcStackWriter::create(&path, 2, 2, 1.0).unwrap();
    let err = w
        .append(Array3::zeros((1, 2, 3)).view())
        .unwrap_err()
        .to_string();
    assert!(err.contains("a.mrcs") && err.contains("2×3"), "{err}");
    assert!(MrcStackWriter::create(&path, 2, 2, 0.0).is_err());
    assert!(MrcStackWriter::create(&path, 0, 2, 1.0).is_err());
}

#[test]
fn stack_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<MrcStack>();
    check::<MrcStackWriter>();
}

/// A valid little- or big-endian file of every mode, for mutation.
fn valid_file() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![0, 1, 2, 6, 12]),
        any::<bool>(),
        1i32..5,
        1i32..5,
        1i32..4,
        0i32..9,
        any::<bool>(),
    )
        .prop_map(|(mode, big, nx, ny, nz, nsymbt, stamp)| {
            let endian = if big { Endian::Big } else { Endian::Little };
            let stamp = match (stamp, big) {
                (false, _) => [0; 4],
                (true, false) => [0x44, 0x44, 0, 0],
                (true, true) => [0x11, 0x11, 0, 0],
            };
            let mut bytes = raw_header(endian, [nx, ny, nz], mode, stamp);
            let nsymbt_word = match endian {
                Endian::Little => nsymbt.to_le_bytes(),
                Endian::Big => nsymbt.to_be_bytes(),
            };
            bytes[92..96].copy_from_slice(&nsymbt_word);
            let bpv = MrcMode::from_code(mode).unwrap().bytes_per_voxel();
            let len = nsymbt as usize + (nx * ny * nz) as usize * bpv;
            bytes.extend((0..len).map(|i| (i * 37 % 251) as u8));
            bytes
        })
}

/// A valid file with header words overwritten and the end cut or extended.
fn mutated_file() -> impl Strategy<Value = Vec<u8>> {
    (
        valid_file(),
        prop::collection::vec((0usize..256, any::<i32>()), 0..4),
        prop::collection::vec(
            (
                0usize..256,
                prop::sample::select(vec![-1, 0, 1, 2, 3, 4, 12, 101, i32::MAX, i32::MIN]),
            ),
            0..3,
        ),
        prop_oneof![Just(None), (0usize..2000).prop_map(Some)],
        0usize..3,
    )
        .prop_map(|(mut bytes, random, small, cut, grow)| {
            for (word, v) in random.into_iter().chain(small) {
                let at = word * 4;
                if at + 4 <= bytes.len() {
                    let le = bytes[212] != 0x11;
                    let b = if le { v.to_le_bytes() } else { v.to_be_bytes() };
                    bytes[at..at + 4].copy_from_slice(&b);
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.min(bytes.len()));
            }
            bytes.extend(std::iter::repeat_n(7u8, grow));
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn reading_any_bytes_never_panics(bytes in mutated_file()) {
        let path = Path::new("fuzz.mrc");
        let (result, largest) = mcg_testdata::alloc::measured(|| {
            read_from(&bytes[..], bytes.len() as u64, path)
        });
        // Never a buffer sized by a header that the file does not back.
        prop_assert!(largest <= mcg_testdata::alloc::bound(bytes.len()), "{largest} bytes");
        match result {
            Ok(got) => {
                // Whatever is accepted is consistent with its header and the file length.
                let h = &got.header;
                prop_assert_eq!(got.data.dim(), h.shape());
                let n = got.data.len() * h.mode.bytes_per_voxel();
                prop_assert_eq!(h.data_offset() + n as u64, bytes.len() as u64);
            }
            Err(e) => prop_assert!(e.to_string().contains("fuzz.mrc")),
        }
    }

    #[test]
    fn reading_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
        let result = read_from(&bytes[..], bytes.len() as u64, Path::new("noise.mrc"));
        if let Err(e) = result {
            prop_assert!(e.to_string().contains("noise.mrc"));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn opening_mutated_stacks_never_panics(bytes in mutated_file(), index in 0usize..6) {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "fuzz.mrcs", &bytes);
        let (opened, largest) = mcg_testdata::alloc::measured(|| MrcStack::open(&path));
        prop_assert!(largest <= mcg_testdata::alloc::bound(bytes.len()), "{largest} bytes");
        if let Ok(stack) = opened {
            let (ny, nx) = stack.image_shape();
            let result = stack.read_into(index, Array2::zeros((ny, nx)).view_mut());
            prop_assert_eq!(result.is_ok(), index < stack.len());
        }
    }
}
