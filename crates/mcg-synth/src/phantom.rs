//! A built-in Hsp90-like phantom: the Hsp90 benchmark's geometry without the PDB files.
//!
//! When the 2cg9 structures are not at hand, the Hsp90 presets build this model instead: two
//! chains (A moves, B is fixed, as in the benchmark), each made of four domains (N-terminal
//! 12–220, middle 221–440 and 441–560, C-terminal 561–677). Each domain is a ball of carbon
//! pseudo-atoms on a 3 Å cubic lattice, centred on the domain's heavy-atom centroid in 2cg9 and
//! sized to its radius of gyration (a uniform ball of radius R has Rg = R·√(3/5)); where balls
//! overlap, a lattice point belongs to the nearest centre only, so no region counts twice. At
//! 3 Å spacing a carbon per point carries about the mass of the protein's own atoms.
//!
//! The domain centroids and radii below are a 48-number summary of 2cg9 chains A and B
//! (residues 12–677, heavy atoms), measured once; the pseudo-atoms sit in the PDB frame, so the
//! benchmark's hinge axis and pivot apply unchanged and the N-terminal domains are 41.6 Å apart
//! at β = 0 and about 68 Å at β = 20°, as in the structure.

use crate::atoms::{Atom, AtomicModel, Element};

/// Lattice spacing of the pseudo-atoms, Å.
const SPACING: f64 = 3.0;

/// One domain of the phantom: chain, residue range, centroid (Å, PDB frame), radius of
/// gyration (Å).
struct Domain {
    chain: &'static str,
    residues: (i32, i32),
    centroid: [f64; 3],
    rg: f64,
}

/// The domains of 2cg9 chains A and B: heavy-atom centroids and radii of gyration.
const DOMAINS: [Domain; 8] = [
    Domain {
        chain: "A",
        residues: (12, 220),
        centroid: [-152.2, -46.7, 27.2],
        rg: 17.3,
    },
    Domain {
        chain: "A",
        residues: (221, 440),
        centroid: [-123.3, -57.6, 20.0],
        rg: 17.5,
    },
    Domain {
        chain: "A",
        residues: (441, 560),
        centroid: [-84.2, -72.0, 22.9],
        rg: 17.8,
    },
    Domain {
        chain: "A",
        residues: (561, 677),
        centroid: [-72.1, -65.5, 36.8],
        rg: 15.5,
    },
    Domain {
        chain: "B",
        residues: (12, 220),
        centroid: [-146.7, -75.5, 56.7],
        rg: 17.3,
    },
    Domain {
        chain: "B",
        residues: (221, 440),
        centroid: [-119.7, -59.2, 59.2],
        rg: 17.5,
    },
    Domain {
        chain: "B",
        residues: (441, 560),
        centroid: [-85.6, -38.8, 51.8],
        rg: 17.1,
    },
    Domain {
        chain: "B",
        residues: (561, 677),
        centroid: [-74.7, -44.2, 35.9],
        rg: 15.5,
    },
];

/// The Hsp90-like phantom (see the module notes): chains A and B of carbon pseudo-atoms,
/// residue numbers within each domain's range, in the PDB frame of 2cg9.
pub fn hsp90_phantom() -> AtomicModel {
    let radius = |d: &Domain| d.rg * (5.0f64 / 3.0).sqrt();
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for d in &DOMAINS {
        for i in 0..3 {
            lo[i] = lo[i].min(d.centroid[i] - radius(d));
            hi[i] = hi[i].max(d.centroid[i] + radius(d));
        }
    }
    let steps = |i: usize| ((hi[i] - lo[i]) / SPACING).ceil() as usize + 1;
    let mut atoms = Vec::new();
    let mut next_residue = [0i32; DOMAINS.len()];
    for iz in 0..steps(2) {
        for iy in 0..steps(1) {
            for ix in 0..steps(0) {
                let p = [
                    lo[0] + ix as f64 * SPACING,
                    lo[1] + iy as f64 * SPACING,
                    lo[2] + iz as f64 * SPACING,
                ];
                let nearest = DOMAINS
                    .iter()
                    .enumerate()
                    .map(|(k, d)| (k, distance(p, d.centroid)))
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("eight domains");
                let (k, r) = nearest;
                let d = &DOMAINS[k];
                if r > radius(d) {
                    continue;
                }
                let span = d.residues.1 - d.residues.0 + 1;
                let residue = d.residues.0 + next_residue[k] % span;
                next_residue[k] += 1;
                atoms.push(Atom {
                    serial: atoms.len() as u32 + 1,
                    name: "C".into(),
                    residue_name: "PSA".into(),
                    chain: d.chain.into(),
                    residue_number: residue,
                    insertion_code: None,
                    element: Element::from_atomic_number(6).expect("carbon"),
                    position: p,
                    occupancy: 1.0,
                    b_factor: 0.0,
                    hetero: false,
                });
            }
        }
    }
    // Chain A first, then B, as the structure files list them.
    atoms.sort_by(|a, b| a.chain.cmp(&b.chain));
    for (i, a) in atoms.iter_mut().enumerate() {
        a.serial = i as u32 + 1;
    }
    AtomicModel { atoms }
}

fn distance(a: [f64; 3], b: [f64; 3]) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::motion::{HSP90_HINGE_AXIS, HSP90_HINGE_PIVOT, hinge_rotate};

    fn ntd_distance(model: &AtomicModel, beta: f64) -> f64 {
        let a = model.select("A", 12..=220);
        let b = model.select("B", 12..=220);
        let mut moved = a.clone();
        hinge_rotate(
            moved.atoms.iter_mut().map(|a| &mut a.position),
            HSP90_HINGE_AXIS,
            HSP90_HINGE_PIVOT,
            beta,
        )
        .unwrap();
        distance(
            moved.heavy_atom_centroid().unwrap(),
            b.heavy_atom_centroid().unwrap(),
        )
    }

    #[test]
    fn phantom_has_the_benchmark_geometry() {
        let m = hsp90_phantom();
        let (a, b) = (m.select("A", 12..=677), m.select("B", 12..=677));
        assert_eq!(a.atoms.len() + b.atoms.len(), m.atoms.len());
        // About the heavy-atom count of the structure (≈ 9,760), within a fifth.
        assert!(
            (7_800..11_700).contains(&m.atoms.len()),
            "{}",
            m.atoms.len()
        );
        let d0 = ntd_distance(&m, 0.0);
        let d20 = ntd_distance(&m, 20.0);
        assert!((d0 - 41.6).abs() < 2.0, "β = 0: {d0} Å");
        assert!((d20 - 68.3).abs() < 3.0, "β = 20°: {d20} Å");
    }

    #[test]
    fn phantom_is_deterministic() {
        assert_eq!(hsp90_phantom(), hsp90_phantom());
    }
}
