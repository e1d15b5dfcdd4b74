//! Timings of mcg-eval for `cargo xtask bench`, in process (no file I/O in the timed part):
//! FSC of two 256³ maps, alignment of 64³ and 32³ Hsp90 maps (the built-in phantom) moved by a
//! known rotation, flip and shift, and the FSCCC matrix of the 21 ground-truth Hsp90 maps of
//! 32³ (β = 0° … 20°). Prints one JSON object on stdout.
//!
//! With a folder argument it also writes the maps it times there (`fsc256_a.mrc`,
//! `fsc256_b.mrc`, `align{32,64}_map.mrc`, `align{32,64}_ref.mrc`), so that the CLI can be
//! timed end to end on the same inputs.
//!
//! `cargo run --release -p mcg-eval --example eval_bench [-- FOLDER]`

use std::path::PathBuf;
use std::time::Instant;

use mcg_eval::align::{AlignConfig, Transform, align, angle_between};
use mcg_eval::fsc::{FscConfig, fsc, fsccc};
use mcg_physics::pose::transpose;
use mcg_physics::rng::{Purpose, bulk_stream};
use mcg_physics::{Pose, Volume};
use mcg_synth::presets::hsp90_continuous;
use mcg_synth::{DensityConfig, Molecule};
use ndarray::Array3;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

fn main() {
    let folder = std::env::args().nth(1).map(PathBuf::from);
    let write = |name: &str, volume: &Volume| {
        if let Some(folder) = &folder {
            std::fs::create_dir_all(folder).expect("creating the output folder");
            mcg_formats::mrc::write_volume(&folder.join(name), volume).expect("writing a map");
        }
    };
    let mut results = Vec::new();

    // FSC of two 256³ maps: a noise map and a noisy copy of it.
    let a = noise(256, 1);
    let mut b = noise(256, 2).into_data();
    b.zip_mut_with(a.data(), |v, x| *v = 0.5 * *v + x);
    let b = Volume::new(b, 1.0).expect("a valid volume");
    write("fsc256_a.mrc", &a);
    write("fsc256_b.mrc", &b);
    let _ = fsc(&a, &b, &FscConfig::default()).expect("FSC"); // warm-up: plans and pages
    let start = Instant::now();
    let curve = fsc(&a, &b, &FscConfig::default()).expect("FSC");
    results.push(
        json!({"name": "fsc 256³ (in process)", "seconds": start.elapsed().as_secs_f64(),
        "area": curve.area()}),
    );
    drop((a, b));

    // Alignment of the Hsp90 phantom (β = 0°) to itself moved by a known transform.
    let molecule = Molecule::hsp90_phantom(hsp90_continuous()).expect("the built-in phantom");
    let states = molecule.ground_truth_states(21);
    for (n, apix) in [(64usize, 2.5f64), (32, 5.0)] {
        let reference = molecule
            .density(&states[0].1, &DensityConfig::new(n, apix))
            .expect("a density map");
        let truth = Transform {
            rotation: Pose::new(37.3, 71.9, -123.4).matrix(),
            flipped: true,
            shift_voxels: [1.7, -2.3, 0.8].map(|s| s * n as f64 / 32.0),
        };
        // The map that `truth` brings onto the reference, V(q) = ref(R·F·q + t): the reference
        // shifted by −t, rotated by Rᵀ, then mirrored.
        let step = |rotation, flipped, shift_voxels, v: &Volume| {
            Transform {
                rotation,
                flipped,
                shift_voxels,
            }
            .apply(v)
        };
        let identity = Transform::identity().rotation;
        let shifted = step(identity, false, truth.shift_voxels.map(|s| -s), &reference);
        let rotated = step(transpose(&truth.rotation), false, [0.0; 3], &shifted);
        let map = step(identity, true, [0.0; 3], &rotated);
        write(&format!("align{n}_map.mrc"), &map);
        write(&format!("align{n}_ref.mrc"), &reference);
        let start = Instant::now();
        let found = align(&map, &reference, &AlignConfig::default()).expect("alignment");
        let seconds = start.elapsed().as_secs_f64();
        results.push(json!({
            "name": format!("align {n}³ (in process)"),
            "seconds": seconds,
            "score_before": found.score_before,
            "score": found.score,
            "flipped": found.transform.flipped,
            "rotation_error_deg": angle_between(&found.transform.rotation, &truth.rotation),
            "shift_voxels": found.transform.shift_voxels,
            "true_shift_voxels": truth.shift_voxels,
        }));
    }

    // FSCCC of the 21 ground-truth maps of 32³.
    let config = DensityConfig::new(32, 5.0);
    let maps: Vec<Volume> = states
        .iter()
        .map(|(_, c)| molecule.density(c, &config).expect("a density map"))
        .collect();
    let start = Instant::now();
    let matrix = fsccc(&maps, &FscConfig::default()).expect("FSCCC");
    results.push(
        json!({"name": "fsccc 21 × 32³ (in process)", "seconds": start.elapsed().as_secs_f64(),
        "first_row": matrix.row(0).to_vec()}),
    );

    println!(
        "{}",
        json!({"results": results, "threads": rayon::current_num_threads()})
    );
}

/// `n³` standard normal voxels of 1 Å from `seed`.
fn noise(n: usize, seed: u64) -> Volume {
    let mut rng = bulk_stream(seed, Purpose::Other(7), 0);
    let data = Array3::from_shape_simple_fn((n, n, n), || StandardNormal.sample(&mut rng));
    Volume::new(data, 1.0).expect("a valid volume")
}
