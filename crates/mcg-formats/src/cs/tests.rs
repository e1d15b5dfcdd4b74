//! Tests of the `.cs` reader.

use super::*;
use mcg_physics::pose::mat_mul;
use proptest::prelude::*;

/// A `.npy` file with a cryoSPARC-like record type, built without NumPy.
fn sample(version: u8) -> Vec<u8> {
    let descr = "[('uid', '<u8'), ('blob/path', '|S12'), ('blob/idx', '<u4'), \
                 ('blob/shape', '<u4', (2,)), ('blob/psize_A', '<f4'), \
                 ('ctf/accel_kv', '<f4'), ('ctf/cs_mm', '<f4'), ('ctf/amp_contrast', '<f4'), \
                 ('ctf/df1_A', '<f4'), ('ctf/df2_A', '>f8'), ('ctf/df_angle_rad', '<f4'), \
                 ('ctf/phase_shift_rad', '<f4'), ('ctf/type', '<U3'), \
                 ('alignments3D/shift', '<f4', (2,)), ('alignments3D/pose', '<f4', (3,)), \
                 ('alignments3D/psize_A', '<f4'), ('alignments3D/class', '<i2'), ('', '|V3')]";
    let header = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (2,), }}");
    let mut out = b"\x93NUMPY".to_vec();
    out.push(version);
    out.push(0);
    let mut h = header.into_bytes();
    let pre = if version == 1 { 10 } else { 12 };
    while (pre + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    if version == 1 {
        out.extend((h.len() as u16).to_le_bytes());
    } else {
        out.extend((h.len() as u32).to_le_bytes());
    }
    out.extend(h);
    for r in 0..2u32 {
        out.extend((1000 + u64::from(r)).to_le_bytes());
        let mut path = *b">J1/s.mrcs\0\0";
        if r == 1 {
            path = *b"t.mrcs\0\0\0\0\0\0";
        }
        out.extend(path);
        out.extend((r + 4).to_le_bytes());
        out.extend(64u32.to_le_bytes());
        out.extend(64u32.to_le_bytes());
        for v in [1.5f32, 300.0, 2.7, 0.1, 12000.0 + r as f32] {
            out.extend(v.to_le_bytes());
        }
        out.extend(11000.5f64.to_be_bytes());
        out.extend(std::f32::consts::FRAC_PI_2.to_le_bytes());
        out.extend(0.0f32.to_le_bytes());
        for c in ['a', 'b', '\0'] {
            out.extend((c as u32).to_le_bytes());
        }
        for v in [2.0f32, -1.0, 0.1, 0.2, 0.3] {
            out.extend(v.to_le_bytes());
        }
        out.extend(3.0f32.to_le_bytes());
        out.extend((-7i16).to_le_bytes());
        out.extend([0u8; 3]);
    }
    out
}

fn p() -> &'static Path {
    Path::new("/nowhere/mem.cs")
}

#[test]
fn reads_a_synthetic_cs_in_all_npy_versions() {
    for version in [1, 2, 3] {
        let set = particles_from_cs(&sample(version), p(), &StarOptions::default()).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.optics.len(), 1);
        let g = &set.optics[0];
        assert_eq!(
            (g.pixel_size, g.image_size, g.voltage),
            (1.5, Some(64), 300.0)
        );
        assert_eq!(g.cs, f64::from(2.7f32));
        let a = &set.particles[0];
        assert_eq!(
            a.image,
            Some(ImageRef {
                path: "J1/s.mrcs".into(),
                index: 4
            })
        );
        assert_eq!(
            set.particles[1].image.as_ref().unwrap().path,
            PathBuf::from("t.mrcs")
        );
        assert_eq!(a.ctf.defocus_u, 12000.0);
        assert_eq!(set.particles[1].ctf.defocus_u, 12001.0);
        assert_eq!(a.ctf.defocus_v, 11000.5);
        assert!((a.ctf.defocus_angle - 90.0).abs() < 1e-5);
        assert_eq!((a.ctf.bfactor, a.ctf.scale), (0.0, 1.0));
        // Shifts are measured at alignments3D/psize_A (3 Å), not blob/psize_A.
        assert_eq!((a.shift.x, a.shift.y), (6.0, -3.0));
        let want = transpose(&matrix_from_rotation_vector([
            f64::from(0.1f32),
            f64::from(0.2f32),
            f64::from(0.3f32),
        ]));
        let got = a.pose.unwrap().matrix();
        for i in 0..3 {
            for j in 0..3 {
                assert!((got[i][j] - want[i][j]).abs() < 1e-12);
            }
        }
        assert_eq!(set.extra_column("_cs/uid").unwrap(), ["1000", "1001"]);
        assert_eq!(set.extra_column("_cs/ctf/type").unwrap(), ["ab", "ab"]);
        assert_eq!(
            set.extra_column("_cs/alignments3D/class").unwrap(),
            ["-7", "-7"]
        );
        assert!(set.extra_column("_cs/blob/shape").is_none());
        assert_eq!(set.extra.len(), 3);
    }
}

#[test]
fn pose_conversion_is_the_transposed_rodrigues_matrix() {
    // 90° about +z: A = R(v)ᵀ = Rz(90°)ᵀ, which is RELION's A(90, 0, 0).
    let pose = pose_from_cryosparc([0.0, 0.0, std::f64::consts::FRAC_PI_2]);
    assert!(
        (pose.rot - 90.0).abs() < 1e-9 && pose.tilt.abs() < 1e-9,
        "{pose:?}"
    );
    // A·R(v) = I for a general vector.
    let v = [0.3, -1.1, 2.0];
    let prod = mat_mul(
        &pose_from_cryosparc(v).matrix(),
        &matrix_from_rotation_vector(v),
    );
    for i in 0..3 {
        for j in 0..3 {
            let id = if i == j { 1.0 } else { 0.0 };
            assert!((prod[i][j] - id).abs() < 1e-9);
        }
    }
    let s = shift_from_cryosparc([2.0, -0.5], 1.5);
    assert_eq!((s.x, s.y), (3.0, -0.75));
}

#[test]
fn header_errors_are_clear() {
    let e = |bytes: &[u8]| {
        particles_from_cs(bytes, p(), &StarOptions::default())
            .unwrap_err()
            .to_string()
    };
    assert!(e(b"hello world, not npy").contains("not a NumPy"));
    let good = sample(1);
    assert!(e(&good[..good.len() - 5]).contains("truncated"));
    let edit = |from: &str, to: &str| {
        assert_eq!(from.len(), to.len());
        let mut b = good.clone();
        let at = b
            .windows(from.len())
            .position(|w| w == from.as_bytes())
            .unwrap();
        b[at..at + to.len()].copy_from_slice(to.as_bytes());
        b
    };
    assert!(e(&edit("'<f4', (3,)", "'|O', (3,) ")).contains("Python objects"));
    assert!(e(&edit("False", "True ")).contains("fortran_order"));
    let msg = e(&edit("ctf/df1_A", "ctf/dfX_A"));
    assert!(msg.contains("ctf/df1_A") && msg.contains("mem.cs"), "{msg}");
    let mut v9 = good.clone();
    v9[6] = 9;
    assert!(e(&v9).contains("version 9"));
}

#[test]
fn empty_record_type_with_a_huge_count_is_refused() {
    let header = "{'descr': [], 'fortran_order': False, 'shape': (1000000000000000,), }\n";
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    let e = particles_from_cs(&b, p(), &StarOptions::default()).unwrap_err();
    assert!(e.to_string().contains("zero bytes"), "{e}");
}

#[test]
fn literal_parser_handles_numpy_headers() {
    let header = "{'descr': [('a', '<f4'), (('t', 'b'), '|S2', (2, 3))], \
                  'shape': (7L,), 'x': None, \"q\\'\": -3,}\n";
    let lit = Lit::parse(header).unwrap();
    let Lit::Dict(d) = lit else { panic!() };
    assert_eq!(d.len(), 4);
    assert_eq!(d[1].1, Lit::Tuple(vec![Lit::Int(7)]));
    let Lit::List(fields) = &d[0].1 else { panic!() };
    let (f, size) = parse_fields(fields, 0).unwrap();
    assert_eq!(
        (f[1].name.as_str(), f[1].count, f[1].offset, size),
        ("b", 6, 4, 16)
    );
}

/// A header that declares 10¹² rows in a file of two is an error naming the file, and
/// nothing is allocated for the rows it does not hold.
#[test]
fn a_declared_shape_beyond_the_file_allocates_nothing_for_it() {
    let b = sample(1);
    let text = String::from_utf8_lossy(&b).into_owned();
    let at = text.find("'shape': (2,)").expect("the sample's shape");
    let mut huge = b[..at].to_vec();
    huge.extend_from_slice(b"'shape': (1000000000000,)");
    huge.extend_from_slice(&b[at + "'shape': (2,)".len()..]);
    // Keep the header's length a multiple of 64, as NumPy's is: trim the padding.
    let grown = "'shape': (1000000000000,)".len() - "'shape': (2,)".len();
    let pad_end = huge
        .iter()
        .position(|&c| c == b'\n')
        .expect("the header's end");
    huge.drain(pad_end - grown..pad_end);
    let (result, largest) =
        mcg_testdata::alloc::measured(|| particles_from_cs(&huge, p(), &StarOptions::default()));
    let e = result.unwrap_err().to_string();
    assert!(e.contains(&p().display().to_string()), "{e}");
    assert!(
        largest <= mcg_testdata::alloc::bound(huge.len()),
        "{largest} bytes"
    );
}

proptest! {
    #[test]
    fn never_panics_on_truncated_or_mutated_files(
        version in 1u8..4,
        cut in 0usize..2000,
        edits in prop::collection::vec((0usize..2000, any::<u8>()), 0..8),
    ) {
        let mut b = sample(version);
        for (at, v) in edits {
            let at = at % b.len();
            b[at] = v;
        }
        b.truncate(cut.min(b.len()));
        let (_, largest) = mcg_testdata::alloc::measured(|| {
            particles_from_cs(&b, p(), &StarOptions::default())
        });
        prop_assert!(largest <= mcg_testdata::alloc::bound(b.len()), "{largest} bytes");
    }

    #[test]
    fn never_panics_on_mutated_headers(
        edits in prop::collection::vec((0usize..700, prop::sample::select(
            b"()[]{}',:0123456789-LTFN< >|fuiSUOV\\x".to_vec())), 1..6),
    ) {
        let mut b = sample(1);
        for (at, v) in edits {
            let at = 10 + at % 600;
            b[at] = v;
        }
        // A mutated header may declare any shape: the reader must not allocate for rows
        // the file does not hold.
        let (_, largest) = mcg_testdata::alloc::measured(|| {
            particles_from_cs(&b, p(), &StarOptions::default())
        });
        prop_assert!(largest <= mcg_testdata::alloc::bound(b.len()), "{largest} bytes");
    }
}
