//! mcg-eval against its oracles: direct DFTs on small grids, analytic and statistical cases,
//! a reimplementation of cryoDRGN's FSC on a cryoDRGN test volume (read in place from
//! `../shared/data`), and alignments of maps transformed by known rotations, flips and shifts.

mod align;
mod fsc;
mod landscape;

use mcg_physics::Volume;
use mcg_physics::rng::{Purpose, stream};
use ndarray::Array3;
use rand_distr::{Distribution, StandardNormal};

/// A `n³` map of independent standard Gaussian voxels from `seed`, plus `offset`.
pub fn noise(n: usize, seed: u64, offset: f32) -> Volume {
    let mut rng = stream(seed, Purpose::Noise, 0);
    let data = Array3::from_shape_simple_fn((n, n, n), || {
        let v: f32 = StandardNormal.sample(&mut rng);
        v + offset
    });
    Volume::new(data, 2.0).unwrap()
}
