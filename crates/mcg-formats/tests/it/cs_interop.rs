//! cryoSPARC `.cs` files (from cryoDRGN's test data). Expected values were read independently
//! with NumPy (`np.load(path)[k][field]`); poses were converted with a separate Rodrigues
//! formula in NumPy (A = R(v)ᵀ) and decomposed into RELION angles there.

use std::path::{Path, PathBuf};

use mcg_formats::cs::read_cs;
use mcg_formats::star::{StarOptions, read_particles, write_particles};
use mcg_formats::{ImageRef, ParticleSet};

use crate::shared;

fn dir() -> Option<PathBuf> {
    shared("interop/cryodrgn")
}

fn read(dir: &Path, name: &str) -> ParticleSet {
    read_cs(&dir.join(name), &StarOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn empiar_cs() {
    let Some(dir) = dir() else { return };
    let set = read(&dir, "empiar_10076_7.cs");
    assert_eq!(set.len(), 7);
    assert_eq!(set.optics.len(), 1);
    let g = &set.optics[0];
    assert_eq!(g.pixel_size, 1.3099979162216187);
    assert_eq!(g.image_size, Some(320));
    assert_eq!(
        (g.voltage, g.cs, g.amplitude_contrast),
        (300.0, f64::from(2.7f32), f64::from(0.07f32))
    );
    let p = &set.particles[5];
    assert_eq!(
        (p.ctf.defocus_u, p.ctf.defocus_v),
        (15305.0, 14920.2998046875)
    );
    assert!(close(p.ctf.defocus_angle, 5.280000044476548, 1e-9));
    assert_eq!(
        (p.ctf.phase_shift, p.ctf.bfactor, p.ctf.scale),
        (0.0, 0.0, 1.0)
    );
    assert_eq!(
        p.image,
        Some(ImageRef {
            path: "empiar_10076_7.mrc".into(),
            index: 5
        })
    );
    assert!(set.resolve(p.image.as_ref().unwrap()).is_file());
    assert!(p.pose.is_none());
    assert_eq!(
        set.extra_column("_cs/uid").unwrap()[0],
        "3806243878409217281"
    );
    assert_eq!(set.extra_column("_cs/ctf/exp_group_id").unwrap()[0], "23");
    assert_eq!(set.extra_column("_cs/ctf/type").unwrap()[0], "imported");
    assert!(set.extra_column("_cs/ctf/anisomag").is_none());
}

#[test]
fn empiar_star_and_cs_agree() {
    let Some(dir) = dir() else { return };
    let cs = read(&dir, "empiar_10076_7.cs");
    let star = read_particles(&dir.join("empiar_10076_7.star"), &StarOptions::default()).unwrap();
    assert_eq!(star.len(), cs.len());
    // The STAR's pixel size is 5 µm / 38168×; the .cs stores the same as float32.
    assert!(close(
        star.optics[0].pixel_size,
        cs.optics[0].pixel_size,
        1e-6
    ));
    assert_eq!(star.optics[0].image_size, cs.optics[0].image_size);
    for (i, (s, c)) in star.particles.iter().zip(&cs.particles).enumerate() {
        // Same stack, same image.
        assert_eq!(s.image, c.image, "particle {i}");
        assert_eq!(
            star.resolve(s.image.as_ref().unwrap()),
            cs.resolve(c.image.as_ref().unwrap())
        );
        // Same units and conventions: df1/df2 are DefocusU/V in Å, the angle (radians in the
        // .cs) is DefocusAngle in degrees; equal to float32 precision.
        assert!(
            close(s.ctf.defocus_u, c.ctf.defocus_u, 2e-3),
            "particle {i}"
        );
        assert!(
            close(s.ctf.defocus_v, c.ctf.defocus_v, 2e-3),
            "particle {i}"
        );
        assert!(
            close(s.ctf.defocus_angle, c.ctf.defocus_angle, 1e-5),
            "particle {i}"
        );
        assert!(close(s.ctf.voltage, c.ctf.voltage, 0.0));
        assert!(close(s.ctf.cs, c.ctf.cs, 1e-6));
        assert!(close(
            s.ctf.amplitude_contrast,
            c.ctf.amplitude_contrast,
            1e-7
        ));
        // The STAR has no phase-shift column (0), the .cs stores 0 rad.
        assert_eq!(s.ctf.phase_shift, c.ctf.phase_shift);
    }
}

#[test]
fn refinement_cs_with_poses_and_shifts() {
    let Some(dir) = dir() else { return };
    let set = read(&dir, "cryosparc_P12_J24_001_particles.cs");
    assert_eq!(set.len(), 2019);
    assert_eq!(set.optics.len(), 1);
    let g = &set.optics[0];
    assert_eq!(
        (g.pixel_size, g.image_size),
        (f64::from(2.95f32), Some(180))
    );
    assert_eq!(
        (g.voltage, g.cs, g.amplitude_contrast),
        (200.0, 2.0, f64::from(0.07f32))
    );

    let p = &set.particles[0];
    assert_eq!(
        (p.ctf.defocus_u, p.ctf.defocus_v),
        (45591.37109375, 45309.79296875)
    );
    assert!(close(p.ctf.defocus_angle, -78.1310939912878, 1e-9));
    let want = [
        [
            0.5816298557386014,
            -0.37730439582642505,
            -0.7206581046540379,
        ],
        [0.05683143902304977, -0.8649114776924018, 0.4986966245068398],
        [
            -0.8114658948175599,
            -0.33101288290035324,
            -0.4816155862323541,
        ],
    ];
    let got = p.pose.unwrap().matrix();
    for i in 0..3 {
        for j in 0..3 {
            assert!(close(got[i][j], want[i][j], 1e-9), "A[{i}][{j}]");
        }
    }
    let pose = p.pose.unwrap();
    assert!(close(pose.rot, -157.80848736454305, 1e-7), "{pose:?}");
    assert!(close(pose.tilt, 118.7909717571975, 1e-7), "{pose:?}");
    assert!(close(pose.psi, 34.68329967052396, 1e-7), "{pose:?}");
    // Shift (11.334375, −1.828125) px at 2.95 Å.
    assert!(close(p.shift.x, 33.43640791580083, 1e-9), "{:?}", p.shift);
    assert!(close(p.shift.y, -5.392968837171793, 1e-9), "{:?}", p.shift);

    let p = &set.particles[5];
    let pose = p.pose.unwrap();
    assert!(close(pose.rot, -113.19646253863937, 1e-7), "{pose:?}");
    assert!(close(pose.tilt, 88.54553638933142, 1e-7), "{pose:?}");
    assert!(close(pose.psi, -58.28792073218958, 1e-7), "{pose:?}");
    assert!(close(p.shift.x, 9.541406404227018, 1e-9));
    assert!(close(p.shift.y, 21.15703159198165, 1e-9));
    let im = p.image.as_ref().unwrap();
    assert_eq!(
        (im.path.as_path(), im.index),
        (
            Path::new(
                "J19/extract/20150917_05196_DNA-TET-25k-DE20_raw.region_000.sum-all_003-072_particles.mrc"
            ),
            5
        )
    );
    let stacks: std::collections::HashSet<_> = set
        .particles
        .iter()
        .map(|p| p.image.as_ref().unwrap().path.clone())
        .collect();
    assert_eq!(stacks.len(), 50);
    assert_eq!(
        set.extra_column("_cs/uid").unwrap()[0],
        "15494748553812943456"
    );
    assert_eq!(
        set.extra_column("_cs/alignments3D/error").unwrap()[0],
        "1342.499"
    );
    assert!(set.extra_column("_cs/alignments3D/pose").is_none());
    assert!(set.extra_column("_cs/alignments3D/psize_A").is_none());

    // A .cs converts to a RELION 3.1 STAR file that reads back the same.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("converted.star");
    write_particles(&out, &set).unwrap();
    let back = read_particles(&out, &StarOptions::default()).unwrap();
    assert_eq!(back.extra, set.extra);
    assert_eq!(back.optics, set.optics);
    for (a, b) in back.particles.iter().zip(&set.particles) {
        assert_eq!((a.pose, a.shift, a.ctf), (b.pose, b.shift, b.ctf));
        let (ia, ib) = (a.image.as_ref().unwrap(), b.image.as_ref().unwrap());
        assert_eq!(ia.index, ib.index);
        assert!(back.resolve(ia).ends_with(&ib.path));
    }
}

#[test]
fn exported_cs_with_project_relative_paths() {
    let Some(dir) = dir() else { return };
    let set = read(&dir, "cryosparc_J2_particles_exported.cs");
    assert_eq!(set.len(), 22);
    assert_eq!(set.optics.len(), 1);
    let g = &set.optics[0];
    assert_eq!(
        (g.pixel_size, g.image_size),
        (f64::from(1.3450001f32), Some(300))
    );
    assert_eq!(
        (g.voltage, g.cs, g.amplitude_contrast),
        (300.0, f64::from(2.7f32), f64::from(0.1f32))
    );
    let p = &set.particles[5];
    // `>` (cryoSPARC's project-relative marker) is dropped.
    assert_eq!(
        p.image,
        Some(ImageRef {
            path: "J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs".into(),
            index: 5
        })
    );
    assert_eq!(
        (p.ctf.defocus_u, p.ctf.defocus_v),
        (16412.177734375, 16236.259765625)
    );
    assert!(close(p.ctf.defocus_angle, 49.36828630196117, 1e-9));
    // Only 2D alignments: no 3D pose, no shift; the scalar 2D fields are kept as text.
    assert!(p.pose.is_none());
    assert_eq!((p.shift.x, p.shift.y), (0.0, 0.0));
    assert_eq!(
        set.extra_column("_cs/alignments2D/pose").unwrap()[0],
        "5.8985004"
    );
    assert_eq!(set.extra_column("_cs/alignments2D/class").unwrap()[0], "4");
    assert!(set.extra_column("_cs/alignments2D/shift").is_none());
}
