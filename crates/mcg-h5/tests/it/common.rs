//! Fixtures: a hand-built particle set and an in-memory image source.

use std::path::{Path, PathBuf};

use mcg_formats::{ImageRef, ImageSource, OpticsGroup, Particle, ParticleSet};
use mcg_physics::{CtfParams, Pose, Shift};
use ndarray::{Array3, ArrayViewMut3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Images held in memory.
#[derive(Debug)]
pub struct MemImages {
    pub data: Array3<f32>,
    pub apix: f64,
}

impl ImageSource for MemImages {
    fn len(&self) -> usize {
        self.data.dim().0
    }

    fn box_size(&self) -> usize {
        self.data.dim().1
    }

    fn pixel_size(&self) -> f64 {
        self.apix
    }

    fn read_batch(
        &self,
        indices: &[usize],
        mut out: ArrayViewMut3<'_, f32>,
    ) -> mcg_formats::Result<()> {
        for (k, &i) in indices.iter().enumerate() {
            out.index_axis_mut(Axis(0), k)
                .assign(&self.data.index_axis(Axis(0), i));
        }
        Ok(())
    }
}

/// `n` random images of `b`² pixels, the first holding values whose bits a careless
/// conversion would change: −0, a NaN with a payload, the smallest subnormal, +∞.
pub fn random_images(n: usize, b: usize, seed: u64) -> MemImages {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = Array3::from_shape_fn((n, b, b), |_| rng.random::<f32>() * 2.0 - 1.0);
    if n > 0 && b >= 2 {
        data[[0, 0, 0]] = -0.0;
        data[[0, 0, 1]] = f32::from_bits(0x7fc0_1234);
        data[[0, 1, 0]] = f32::from_bits(1);
        data[[0, 1, 1]] = f32::INFINITY;
    }
    MemImages { data, apix: 5.0 }
}

/// A particle set with every field filled: 2 optics groups with extra columns, poses, shifts,
/// full CTFs, classes, source image references and two extra columns (one with spaces and
/// non-ASCII text).
pub fn full_set(n: usize, seed: u64) -> ParticleSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let optics = vec![
        OpticsGroup {
            id: 1,
            name: "opticsGroup1".into(),
            pixel_size: 5.0,
            image_size: Some(16),
            voltage: 300.0,
            cs: 2.7,
            amplitude_contrast: 0.1,
            extra: vec![
                ("_rlnImageDimensionality".into(), "2".into()),
                ("_rlnMicrographOriginalPixelSize".into(), "1.25".into()),
            ],
        },
        OpticsGroup {
            id: 7,
            name: "group β two".into(),
            pixel_size: 5.0,
            image_size: Some(16),
            voltage: 200.0,
            cs: 0.01,
            amplitude_contrast: 0.07,
            extra: vec![("_rlnImageDimensionality".into(), "2".into())],
        },
    ];
    let particles = (0..n)
        .map(|i| {
            let og = i % 2;
            Particle {
                image: Some(ImageRef {
                    path: PathBuf::from(format!("Extract/job012/stack_{}.mrcs", i / 5)),
                    index: i % 5,
                }),
                optics_group: og,
                pose: Some(Pose::new(
                    rng.random::<f64>() * 360.0 - 180.0,
                    rng.random::<f64>() * 180.0,
                    rng.random::<f64>() * 360.0 - 180.0,
                )),
                shift: Shift {
                    x: rng.random::<f64>() * 10.0 - 5.0,
                    y: rng.random::<f64>() * 10.0 - 5.0,
                },
                ctf: CtfParams {
                    defocus_u: 10_000.0 + rng.random::<f64>() * 10_000.0,
                    defocus_v: 10_000.0 + rng.random::<f64>() * 10_000.0,
                    defocus_angle: rng.random::<f64>() * 180.0,
                    voltage: optics[og].voltage,
                    cs: optics[og].cs,
                    amplitude_contrast: optics[og].amplitude_contrast,
                    phase_shift: rng.random::<f64>() * 90.0,
                    bfactor: rng.random::<f64>() * 100.0,
                    scale: 0.5 + rng.random::<f64>(),
                },
                class: Some(1 + (i % 3) as u32),
            }
        })
        .collect();
    let extra = vec![
        (
            "_rlnMicrographName".into(),
            (0..n)
                .map(|i| format!("MotionCorr/job002/mic {}.mrc", i / 4))
                .collect(),
        ),
        (
            "_mcgBeta".into(),
            (0..n).map(|i| format!("{:.3} β", i as f64 * 0.5)).collect(),
        ),
    ];
    ParticleSet {
        optics,
        particles,
        extra,
        base_dir: PathBuf::from("/data/project"),
    }
}

/// What reading `set` back from the file `path` must give: the same set, with particle `i`'s
/// image at index `i` of the file and the file's folder as base.
pub fn as_read_from(set: &ParticleSet, path: &Path) -> ParticleSet {
    let mut want = set.clone();
    for (i, p) in want.particles.iter_mut().enumerate() {
        p.image = Some(ImageRef {
            path: PathBuf::from(path.file_name().unwrap()),
            index: i,
        });
    }
    want.base_dir = path.parent().unwrap().to_path_buf();
    want
}

/// Whether two images are equal bit for bit.
pub fn bits_equal(a: ndarray::ArrayView2<'_, f32>, b: ndarray::ArrayView2<'_, f32>) -> bool {
    a.shape() == b.shape()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

/// The names of the files in `dir`.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
