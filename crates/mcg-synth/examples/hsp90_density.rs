//! Times `density_map` on the Hsp90 dimer (the benchmark's 12–677 bodies, β = 0).
//!
//! `cargo run --release -p mcg-synth --example hsp90_density -- [structures/hsp90 folder]`
//! (default: `../shared/data/structures/hsp90` beside the repository).

use std::path::PathBuf;
use std::time::Instant;

use mcg_synth::{AtomicModel, DensityConfig, SynthError, density_map, frame_origin};

fn main() -> Result<(), SynthError> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/structures/hsp90")
        });
    let mut dimer = AtomicModel::read_model(&dir.join("2cg9_chainA_res12-677.pdb"))?;
    dimer.extend(&AtomicModel::read_model(
        &dir.join("2cg9_chainB_res12-677.pdb"),
    )?);
    let atoms = dimer.density_atoms(frame_origin(&dimer)?)?;
    for (n, apix) in [(32, 5.0), (64, 2.5), (128, 1.25)] {
        let cfg = DensityConfig::new(n, apix);
        let _warm = density_map(&atoms, &cfg)?;
        let runs = 5;
        let start = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(density_map(&atoms, &cfg)?);
        }
        let ms = start.elapsed().as_secs_f64() * 1e3 / f64::from(runs);
        println!("{} atoms, {n}³ at {apix} Å: {ms:.1} ms", atoms.len());
    }
    Ok(())
}
