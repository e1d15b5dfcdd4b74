//! The landscape metrics on the Hsp90 benchmark's ground truth (the real 2cg9 structures when
//! `../shared` is beside the checkout, else the built-in phantom).

use mcg_eval::landscape::{
    cell_midpoints, discrete_probabilities, fsccc_positions, midpoint_threshold,
};
use mcg_eval::{FscConfig, fsc, fsccc};
use mcg_physics::Volume;
use mcg_synth::density::DensityConfig;
use mcg_synth::molecule::Molecule;
use mcg_synth::presets::hsp90_continuous;

/// β = 0°, 1°, …, 20° maps at 32³ / 5 Å (the paper's grid).
fn hsp90_series() -> Vec<Volume> {
    let molecule = match mcg_testdata::shared("structures/hsp90") {
        Some(dir) => Molecule::load(hsp90_continuous(), &dir).unwrap(),
        None => Molecule::hsp90_phantom(hsp90_continuous()).unwrap(),
    };
    let cfg = DensityConfig::new(32, 5.0);
    molecule
        .ground_truth_states(21)
        .iter()
        .map(|(_, c)| molecule.density(c, &cfg).unwrap())
        .collect()
}

#[test]
fn fsccc_of_the_hsp90_series_is_symmetric_one_on_the_diagonal_and_falls_away_from_it() {
    let maps = hsp90_series();
    let m = fsccc(&maps, &FscConfig::default()).unwrap();
    assert_eq!(m.dim(), (21, 21));
    for i in 0..21 {
        assert!((m[[i, i]] - 1.0).abs() < 1e-9, "M[{i},{i}] = {}", m[[i, i]]);
        for j in 0..21 {
            assert!((m[[i, j]] - m[[j, i]]).abs() < 1e-12);
        }
        // Away from the diagonal, along each row, similarity falls (the hinge only opens).
        for j in i + 1..20 {
            assert!(
                m[[i, j + 1]] < m[[i, j]],
                "row {i}: M[{i},{}] = {} not below M[{i},{j}] = {}",
                j + 1,
                m[[i, j + 1]],
                m[[i, j]]
            );
        }
    }
    // The ends are the least alike pair, yet (real structures) above the paper's 0.5: half
    // of the mass, chain B, does not move. See `midpoint_threshold`.
    eprintln!("AreaFSC(β 0°, β 20°) = {:.3}", m[[0, 20]]);
    assert!(m[[0, 20]] < m[[0, 19]] && m[[0, 20]] > 0.0);
}

#[test]
fn the_rule_on_the_ideal_25_75_landscape_returns_25_75_0() {
    let maps = hsp90_series();
    let (closed, open) = (&maps[0], &maps[20]);
    // The ideal reconstruction: α < 0.25 is the closed state, the rest the open one.
    let ideal = |alpha: f64| if alpha < 0.25 { closed } else { open };
    let ends = fsccc_positions(20);
    let (first, last) = (ideal(ends[0]), ideal(ends[20]));
    let cfg = FscConfig::default();
    let area = |a: &Volume, b: &Volume| fsc(a, b, &cfg).unwrap().area();
    let cells = cell_midpoints(20);
    let to_first: Vec<f64> = cells.iter().map(|&a| area(first, ideal(a))).collect();
    let to_second: Vec<f64> = cells.iter().map(|&a| area(last, ideal(a))).collect();
    let threshold = midpoint_threshold(area(first, last));
    let p = discrete_probabilities(&to_first, &to_second, threshold);
    assert_eq!((p.first, p.second, p.transition), (0.25, 0.75, 0.0));
}
