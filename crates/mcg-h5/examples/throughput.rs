//! Ad-hoc throughput measurement (not a test): writes `n` synthetic 32² images with their
//! metadata, then reads random batches of 256, on one thread and on four.
//!
//! `cargo run --release -p mcg-h5 --example throughput -- [folder] [n]`

use std::path::PathBuf;
use std::time::Instant;

use mcg_formats::{ImageSource, OpticsGroup, Particle, ParticleSet};
use mcg_h5::{H5Particles, write_particle_set};
use mcg_physics::{CtfParams, Pose, Shift};
use ndarray::{Array3, ArrayViewMut3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Images computed from their index, so that memory stays flat while writing.
#[derive(Debug)]
struct Synthetic {
    n: usize,
    b: usize,
}

impl ImageSource for Synthetic {
    fn len(&self) -> usize {
        self.n
    }
    fn box_size(&self) -> usize {
        self.b
    }
    fn pixel_size(&self) -> f64 {
        5.0
    }
    fn read_batch(
        &self,
        indices: &[usize],
        mut out: ArrayViewMut3<'_, f32>,
    ) -> mcg_formats::Result<()> {
        for (k, &i) in indices.iter().enumerate() {
            for ((y, x), v) in out.index_axis_mut(ndarray::Axis(0), k).indexed_iter_mut() {
                *v = (i as f32) + (y * 32 + x) as f32 * 1e-4;
            }
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).map_or("/tmp", String::as_str));
    let n: usize = args.get(2).map_or(100_000, |s| s.parse().unwrap());
    let b = 32;
    let path = dir.join("throughput.h5");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let set = ParticleSet {
        optics: vec![OpticsGroup::single(5.0, Some(b), &Default::default())],
        particles: (0..n)
            .map(|_| Particle {
                image: None,
                optics_group: 0,
                pose: Some(Pose::sample_uniform(&mut rng)),
                shift: Shift::default(),
                ctf: CtfParams {
                    defocus_u: rng.random_range(10_000.0..20_000.0),
                    ..CtfParams::default()
                },
                class: None,
            })
            .collect(),
        extra: vec![(
            "_mcgBeta".into(),
            (0..n).map(|i| format!("{}", i % 21)).collect(),
        )],
        base_dir: PathBuf::new(),
    };
    let mb = (n * b * b * 4) as f64 / 1e6;

    let t = Instant::now();
    write_particle_set(&path, &set, &Synthetic { n, b }, 1024, &mut |_, _| {}).unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "write: {n} images in {s:.2} s = {:.0} images/s, {:.0} MB/s (with metadata and fsync)",
        n as f64 / s,
        mb / s
    );

    let h5 = H5Particles::open(&path).unwrap();
    let t = Instant::now();
    let read = h5.particle_set().unwrap();
    println!("particle_set: {:.3} s", t.elapsed().as_secs_f64());
    assert_eq!(read.len(), n);

    let batch = 256;
    let batches = 400;
    let mut out = Array3::<f32>::zeros((batch, b, b));
    let index_lists: Vec<Vec<usize>> = (0..batches)
        .map(|_| (0..batch).map(|_| rng.random_range(0..n)).collect())
        .collect();
    let t = Instant::now();
    for idx in &index_lists {
        h5.read_batch(idx, out.view_mut()).unwrap();
        assert_eq!(out[[0, 0, 0]], idx[0] as f32);
    }
    let s = t.elapsed().as_secs_f64();
    let imgs = (batch * batches) as f64;
    println!(
        "random read, 1 thread: {:.0} images/s ({:.2} ms per batch of {batch})",
        imgs / s,
        s * 1e3 / batches as f64
    );

    let t = Instant::now();
    std::thread::scope(|scope| {
        for chunk in index_lists.chunks(batches / 4) {
            let h5 = &h5;
            scope.spawn(move || {
                let mut out = Array3::<f32>::zeros((batch, b, b));
                for idx in chunk {
                    h5.read_batch(idx, out.view_mut()).unwrap();
                }
            });
        }
    });
    let s = t.elapsed().as_secs_f64();
    println!("random read, 4 threads: {:.0} images/s", imgs / s);

    let t = Instant::now();
    for start in (0..n).step_by(batch) {
        let k = batch.min(n - start);
        let idx: Vec<usize> = (start..start + k).collect();
        h5.read_batch(&idx, out.slice_mut(ndarray::s![..k, .., ..]))
            .unwrap();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "sequential read: {:.0} images/s, {:.0} MB/s",
        n as f64 / s,
        mb / s
    );
    println!(
        "file size: {:.1} MB",
        std::fs::metadata(&path).unwrap().len() as f64 / 1e6
    );
    std::fs::remove_file(&path).unwrap();
}
