//! RELION STAR files written by RELION 3.0, 3.1 and 5 (from cryoDRGN's test data): every file
//! is read, checked against values read off the file by hand, and written back.

use std::path::{Component, Path, PathBuf};

use mcg_formats::ParticleSet;
use mcg_formats::star::{StarOptions, read_particles, read_star, write_particles};

use crate::shared;

const TOL: f64 = 1e-9;

fn dir() -> Option<PathBuf> {
    shared("interop/cryodrgn")
}

fn read(dir: &Path, name: &str, opts: &StarOptions) -> ParticleSet {
    read_particles(&dir.join(name), opts).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// Absolute and without `.`/`..`, to compare paths written relative to different folders.
fn norm(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap();
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            _ => out.push(c),
        }
    }
    out
}

/// Writes `set` to a temporary folder, reads it back, and checks that everything but the way
/// image paths are written (relative to another folder) is unchanged.
fn assert_round_trip(set: &ParticleSet, name: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(name);
    write_particles(&out, set).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = read_particles(&out, &StarOptions::default()).unwrap();
    assert_eq!(back.len(), set.len());
    for (a, b) in back.particles.iter().zip(&set.particles) {
        match (&a.image, &b.image) {
            (Some(ia), Some(ib)) => {
                assert_eq!(ia.index, ib.index);
                assert_eq!(norm(&back.resolve(ia)), norm(&set.resolve(ib)), "{name}");
            }
            (None, None) => {}
            _ => panic!("{name}: image presence changed"),
        }
    }
    let strip = |s: &ParticleSet| {
        let mut s = s.clone();
        s.base_dir = PathBuf::new();
        for p in &mut s.particles {
            p.image = None;
        }
        s
    };
    assert_eq!(strip(&back), strip(set), "{name}");
}

#[test]
fn relion31_optics_and_particles() {
    let Some(dir) = dir() else { return };
    let set = read(&dir, "relion31.star", &StarOptions::default());
    assert_eq!(set.len(), 5);
    assert_eq!(set.optics.len(), 1);
    let g = &set.optics[0];
    assert_eq!((g.id, g.name.as_str()), (1, "opticsGroup1"));
    assert_eq!((g.pixel_size, g.image_size), (2.806, Some(256)));
    assert_eq!((g.voltage, g.cs, g.amplitude_contrast), (300.0, 0.01, 0.1));
    assert!(
        g.extra
            .contains(&("_rlnMicrographOriginalPixelSize".into(), "1.403000".into()))
    );

    let p = &set.particles[2];
    assert_eq!(
        (p.ctf.defocus_u, p.ctf.defocus_v),
        (12730.825404, 12468.325404)
    );
    assert_eq!(p.ctf.defocus_angle, -160.39);
    assert_eq!(
        (p.ctf.voltage, p.ctf.bfactor, p.ctf.scale),
        (300.0, 0.0, 1.0)
    );
    let pose = p.pose.unwrap();
    assert_eq!(
        (pose.rot, pose.tilt, pose.psi),
        (-99.556, 74.982413, 132.223679)
    );
    assert_eq!((p.shift.x, p.shift.y), (-0.65323, -0.09226));
    assert_eq!(p.class, Some(1));
    let im = p.image.as_ref().unwrap();
    assert_eq!(
        (im.path.as_path(), im.index),
        (Path::new("relion31.mrcs"), 2)
    );
    assert_eq!(set.resolve(im), dir.join("relion31.mrcs"));
    assert!(set.resolve(im).is_file());

    assert_eq!(
        set.extra_column("_rlnNrOfSignificantSamples").unwrap(),
        ["450", "254", "178", "81", "59"]
    );
    assert!(set.extra_column("_rlnImageOriginalName").is_some());
    assert!(set.extra_column("_rlnDefocusU").is_none());
    assert_round_trip(&set, "relion31.star");
}

#[test]
fn block_order_does_not_matter() {
    let Some(dir) = dir() else { return };
    let a = read(&dir, "relion31.star", &StarOptions::default());
    let b = read(&dir, "relion31.v2.star", &StarOptions::default());
    assert_eq!(a, b);
    let raw = read_star(&dir.join("relion31.v2.star")).unwrap();
    let names: Vec<_> = raw.blocks.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["particles", "optics"]);
}

#[test]
fn six_optics_groups() {
    let Some(dir) = dir() else { return };
    let set = read(&dir, "relion31.6opticsgroups.star", &StarOptions::default());
    assert_eq!(set.len(), 139);
    assert_eq!(set.optics.len(), 6);
    let count = |id: u32| {
        (0..set.len())
            .filter(|&i| set.optics_of(i).id == id)
            .count()
    };
    assert_eq!([1, 2, 3, 4, 5, 6].map(count), [48, 29, 5, 7, 26, 24]);
    let names: Vec<_> = set.optics.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "opticsGroup5",
            "opticsGroup3",
            "opticsGroup2",
            "opticsGroup1",
            "opticsGroup4",
            "opticsGroup6"
        ]
    );
    assert_eq!(set.optics[3].cs, 2.6);
    assert_eq!(set.optics[1].pixel_size, 1.24);
    assert!(set.optics[0].extra.contains(&(
        "_rlnOddZernike".into(),
        "[1.70554063513,1.2131261042,2.54522458134,0,0,3.56183614819]".into()
    )));

    let p = &set.particles[2];
    let g = set.optics_of(2);
    assert_eq!((g.id, g.pixel_size, g.image_size), (6, 1.25, Some(196)));
    assert_eq!(
        (p.ctf.voltage, p.ctf.cs, p.ctf.amplitude_contrast),
        (200.0, 2.7, 0.1)
    );
    assert_eq!(p.ctf.defocus_u, 14197.948733);
    let pose = p.pose.unwrap();
    assert_eq!(
        (pose.rot, pose.tilt, pose.psi),
        (-114.92957, 47.963188, -166.59197)
    );
    assert_eq!((p.shift.x, p.shift.y), (-2.96545, 3.950179));
    let im = p.image.as_ref().unwrap();
    assert_eq!(
        im.path,
        Path::new("Polish/job520/Micrographs/0040_shiny.mrcs")
    );
    assert_eq!(im.index, 67);
    assert_round_trip(&set, "six.star");
}

#[test]
fn relion5_with_images_in_a_data_folder() {
    let Some(dir) = dir() else { return };
    let data = dir.join("toy_datadir");
    let opts = StarOptions {
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    let set = read(&dir, "relion5.star", &opts);
    assert_eq!(set.len(), 17);
    assert_eq!(set.optics.len(), 1);
    let g = &set.optics[0];
    assert_eq!((g.voltage, g.cs, g.amplitude_contrast), (100.0, 1.6, 0.1));
    assert_eq!((g.pixel_size, g.image_size), (0.89, Some(448)));
    let p = &set.particles[2];
    assert_eq!(p.ctf.defocus_u, 11895.295429);
    let pose = p.pose.unwrap();
    assert_eq!(
        (pose.rot, pose.tilt, pose.psi),
        (142.140028, 122.645978, 92.718984)
    );
    assert_eq!((p.shift.x, p.shift.y), (-3.12578, -1.41031));
    let im = p.image.as_ref().unwrap();
    assert_eq!(
        (im.path.as_path(), im.index),
        (Path::new("toy_images_a.mrcs"), 2)
    );
    assert_eq!(
        norm(&set.resolve(im)),
        norm(&data.join("toy_images_a.mrcs"))
    );
    let stacks: Vec<_> = set
        .particles
        .iter()
        .map(|p| set.resolve(p.image.as_ref().unwrap()))
        .collect();
    assert!(stacks.iter().all(|s| s.is_file()));
    assert_eq!(
        stacks
            .iter()
            .filter(|s| s.ends_with("toy_images_b.mrcs"))
            .count(),
        6
    );

    // Without the data folder the images resolve beside the STAR file, where they are not.
    let plain = read(&dir, "relion5.star", &StarOptions::default());
    assert!(
        !plain
            .resolve(plain.particles[2].image.as_ref().unwrap())
            .exists()
    );
    assert_round_trip(&set, "relion5.star");
}

#[test]
fn relion30_shifts_in_pixels() {
    let Some(dir) = dir() else { return };
    let set = read(
        &dir,
        "FinalRefinement-OriginalParticles-PfCRT.star",
        &StarOptions::default(),
    );
    assert_eq!(set.len(), 5);
    assert_eq!(set.optics.len(), 1);
    let g = &set.optics[0];
    // 1.035 µm detector pixels at 10,000× magnification.
    assert!(close(g.pixel_size, 1.035, TOL));
    // No _rlnAmplitudeContrast column: RELION's default 0.
    assert_eq!((g.voltage, g.cs, g.amplitude_contrast), (300.0, 0.001, 0.0));
    let p = &set.particles[2];
    assert!(close(p.shift.x, -0.10937 * 1.035, TOL), "{:?}", p.shift);
    assert!(close(p.shift.y, -0.23438 * 1.035, TOL), "{:?}", p.shift);
    assert_eq!(
        (p.ctf.defocus_u, p.ctf.defocus_v, p.ctf.defocus_angle),
        (15184.0, 16345.9, 10.870927)
    );
    let pose = p.pose.unwrap();
    assert_eq!(
        (pose.rot, pose.tilt, pose.psi),
        (76.3789, 103.415276, 164.73022)
    );
    let im = p.image.as_ref().unwrap();
    assert_eq!(
        (im.path.as_path(), im.index),
        (
            Path::new("Extract/job012/FinalRefinement-OriginalParticles-PfCRT.mrcs"),
            2
        )
    );
    // The pixel-unit columns were consumed; others are kept.
    assert!(set.extra_column("_rlnOriginX").is_none());
    assert!(set.extra_column("_rlnImageOriginalName").is_some());
    assert_round_trip(&set, "pfcrt.star");
}

#[test]
fn relion30_toy_projections_and_data_folder() {
    let Some(dir) = dir() else { return };
    // No pixel-size label: the option fills it in…
    let opts = StarOptions {
        apix: Some(2.5),
        ..Default::default()
    };
    let set = read(&dir, "toy_projections.star", &opts);
    assert_eq!(set.len(), 1000);
    assert_eq!(set.optics.len(), 1);
    assert_eq!(set.optics[0].pixel_size, 2.5);
    // …else the stack header does (MX = 1 and a cell of 1 Å give 1 Å).
    let header = mcg_formats::mrc::read_header(&dir.join("toy_projections.mrcs")).unwrap();
    let plain = read(&dir, "toy_projections.star", &StarOptions::default());
    assert_eq!(Some(plain.optics[0].pixel_size), header.voxel_size());
    assert_eq!(plain.optics[0].image_size, Some(30));
    let p = &set.particles[999];
    assert_eq!(p.image.as_ref().unwrap().index, 999);
    assert_eq!(
        (p.ctf.defocus_u, p.ctf.phase_shift, p.ctf.cs),
        (0.0, 90.0, 0.001)
    );
    assert!(p.pose.is_none());
    assert_eq!(set.extra_column("_dummyVariable").unwrap()[11], "12");

    let data = dir.join("toy_datadir");
    let in_dir = read(
        &dir,
        "toy_projections_dir.star",
        &StarOptions {
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    );
    assert_eq!(in_dir.len(), 1000);
    assert_eq!(in_dir.optics[0].pixel_size, 1.0);
    assert_eq!(in_dir.optics[0].image_size, Some(30));
    let stacks: Vec<_> = in_dir
        .particles
        .iter()
        .map(|p| in_dir.resolve(p.image.as_ref().unwrap()))
        .collect();
    assert!(stacks.iter().all(|s| s.is_file()));
    assert_eq!(
        stacks
            .iter()
            .filter(|s| s.ends_with("toy_images_a.mrcs"))
            .count(),
        100
    );
    assert_eq!(in_dir.particles[950].image.as_ref().unwrap().index, 50);
    // Same metadata as toy_projections.star, in another stack layout.
    for (a, b) in in_dir.particles.iter().zip(&plain.particles) {
        assert_eq!(a.ctf, b.ctf);
    }
    assert_eq!(in_dir.extra, plain.extra);
    assert_round_trip(&set, "toy.star");
    assert_round_trip(&in_dir, "toy_dir.star");
}

#[test]
fn malformed_copies_are_refused_with_the_label() {
    let Some(dir) = dir() else { return };
    let text = std::fs::read_to_string(dir.join("relion31.star")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let error = |name: &str, text: String| {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        read_particles(&path, &StarOptions::default())
            .unwrap_err()
            .to_string()
    };

    let e = error(
        "no_defocus.star",
        text.replace("_rlnDefocusU #7", "_rlnDefocusUU #7"),
    );
    assert!(
        e.contains("no_defocus.star")
            && e.contains("data_particles")
            && e.contains("_rlnDefocusU:"),
        "{e}"
    );

    let e = error(
        "bad_number.star",
        text.replace("12906.018499", "12906.0x8499"),
    );
    assert!(
        e.contains("_rlnDefocusU, row 2") && e.contains("\"12906.0x8499\""),
        "{e}"
    );

    let e = error(
        "no_voltage.star",
        text.replace("_rlnVoltage #5", "_rlnVoltageX #5"),
    );
    assert!(
        e.contains("data_optics") && e.contains("_rlnVoltage"),
        "{e}"
    );

    let e = error("short_row.star", text.replace(" 000003@relion31.mrcs", ""));
    assert!(
        e.contains("line") && e.contains("25 values, expected 26"),
        "{e}"
    );
}
