//! The reference structures of `../shared/data/structures` and the Hsp90 benchmark motion.

use mcg_synth::motion::{
    HSP90_BODY_RESIDUES, HSP90_FIXED_CHAIN, HSP90_HINGE_AXIS, HSP90_HINGE_PIVOT, HSP90_MOVING_CHAIN,
};
use mcg_synth::{AtomicModel, DensityConfig, Element, density_map, frame_origin, hinge_rotate};

fn read(rel: &str) -> Option<AtomicModel> {
    let path = mcg_testdata::shared(rel)?;
    Some(AtomicModel::read_model(&path).unwrap())
}

#[test]
fn hsp90_files_have_the_documented_atom_counts() {
    for (file, count) in [
        ("2cg9_chainA.pdb", 4923),
        ("2cg9_chainB.pdb", 4997),
        ("2cg9_chainA_res12-677.pdb", 4842),
        ("2cg9_chainB_res12-677.pdb", 4916),
    ] {
        let Some(model) = read(&format!("structures/hsp90/{file}")) else {
            return;
        };
        assert_eq!(model.atoms.len(), count, "{file}");
        assert!(
            model
                .atoms
                .iter()
                .all(|a| a.element.is_known() && !a.element.is_hydrogen())
        );
    }
}

#[test]
fn adk_charmm_names_give_elements() {
    for file in ["adk_closed.pdb", "adk_open.pdb"] {
        let Some(model) = read(&format!("structures/adk/{file}")) else {
            return;
        };
        assert_eq!(model.atoms.len(), 3341, "{file}");
        let count = |e: Element| model.atoms.iter().filter(|a| a.element == e).count();
        let unknown = model.atoms.iter().filter(|a| !a.element.is_known()).count();
        println!(
            "{file}: H {} C {} N {} O {} S {} unknown {unknown}",
            count(Element::H),
            count(Element::C),
            count(Element::N),
            count(Element::O),
            count(Element::S)
        );
        assert_eq!(unknown, 0, "{file}");
        assert!(count(Element::H) > 0, "{file}");
        // Every residue has one alpha carbon named CA, and it must be carbon, not calcium.
        let ca: Vec<&Element> = model
            .atoms
            .iter()
            .filter(|a| a.name == "CA")
            .map(|a| &a.element)
            .collect();
        assert_eq!(ca.len(), 214);
        assert!(ca.iter().all(|&&e| e == Element::C));
        // CHARMM names: HT1 hydrogen, OT1 oxygen, NZ nitrogen, SD sulfur, CD1 carbon.
        for (name, element) in [
            ("HT1", Element::H),
            ("OT1", Element::O),
            ("NZ", Element::N),
            ("SD", Element::S),
            ("CD1", Element::C),
        ] {
            let atom = model.atoms.iter().find(|a| a.name == name).unwrap();
            assert_eq!(atom.element, element, "{name}");
        }
        // Sulfur: 6 MET SD + 1 CYS SG.
        assert_eq!(count(Element::S), 7);
    }
}

#[test]
fn hinge_rotation_is_the_conventions_r_beta() {
    let beta: f64 = 17.0;
    let (s, c) = beta.to_radians().sin_cos();
    let p = HSP90_HINGE_PIVOT;
    let x = [3.0, -7.0, 11.0];
    let d = [x[0] - p[0], x[1] - p[1], x[2] - p[2]];
    // R_β = [[cos β, 0, −sin β], [0, 1, 0], [sin β, 0, cos β]]
    let want = [
        c * d[0] - s * d[2] + p[0],
        d[1] + p[1],
        s * d[0] + c * d[2] + p[2],
    ];
    let mut got = [x];
    hinge_rotate(got.iter_mut(), HSP90_HINGE_AXIS, p, beta).unwrap();
    for i in 0..3 {
        assert!(
            (got[0][i] - want[i]).abs() < 1e-12,
            "{:?} vs {want:?}",
            got[0]
        );
    }
    assert!(hinge_rotate(got.iter_mut(), [0.0; 3], p, beta).is_err());
}

/// The distance (Å) between the centroids of the N-terminal domains (residues 12–220, all atoms,
/// which in these files are all heavy atoms) of chain A opened by `beta_deg` and chain B.
fn ntd_distance(moving: &AtomicModel, fixed: &AtomicModel, beta_deg: f64) -> f64 {
    let mut moved = moving.clone();
    hinge_rotate(
        moved.atoms.iter_mut().map(|a| &mut a.position),
        HSP90_HINGE_AXIS,
        HSP90_HINGE_PIVOT,
        beta_deg,
    )
    .unwrap();
    let a = moved
        .select(HSP90_MOVING_CHAIN, 12..=220)
        .heavy_atom_centroid()
        .unwrap();
    let b = fixed
        .select(HSP90_FIXED_CHAIN, 12..=220)
        .heavy_atom_centroid()
        .unwrap();
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn bodies() -> Option<(AtomicModel, AtomicModel)> {
    let a = read("structures/hsp90/2cg9_chainA_res12-677.pdb")?;
    let b = read("structures/hsp90/2cg9_chainB_res12-677.pdb")?;
    Some((
        a.select(HSP90_MOVING_CHAIN, HSP90_BODY_RESIDUES),
        b.select(HSP90_FIXED_CHAIN, HSP90_BODY_RESIDUES),
    ))
}

#[test]
fn hsp90_n_terminal_domains_open_from_41_to_68_angstrom() {
    let Some((moving, fixed)) = bodies() else {
        return;
    };
    assert_eq!((moving.atoms.len(), fixed.atoms.len()), (4842, 4916));
    let closed = ntd_distance(&moving, &fixed, 0.0);
    let open = ntd_distance(&moving, &fixed, 20.0);
    println!("N-terminal domain centroids: {closed:.3} Å at β = 0°, {open:.3} Å at β = 20°");
    assert!((closed - 41.0).abs() < 1.5, "closed: {closed} Å");
    assert!((open - 68.0).abs() < 1.5, "open: {open} Å");
}

#[test]
fn hsp90_dimer_map_integrates_to_its_electrons() {
    let Some((moving, fixed)) = bodies() else {
        return;
    };
    let mut dimer = moving.clone();
    dimer.extend(&fixed);
    let origin = frame_origin(&dimer).unwrap();
    let atoms = dimer.density_atoms(origin).unwrap();
    let total: f64 = atoms.iter().map(|a| a.1).sum();
    let cfg = DensityConfig::new(32, 5.0);
    let map = density_map(&atoms, &cfg).unwrap();
    let integral = map.data().iter().map(|&v| f64::from(v)).sum::<f64>() * 125.0;
    assert!(
        (integral / total - 1.0).abs() < 1e-6,
        "{integral} vs {total}"
    );
    // The frame is centred: the Z-weighted centroid of the map is near the box centre.
    let mut moment = [0.0; 3];
    for ((iz, iy, ix), &v) in map.data().indexed_iter() {
        for (m, i) in moment.iter_mut().zip([ix, iy, iz]) {
            *m += f64::from(v) * (i as f64 - 16.0) * 5.0 * 125.0 / total;
        }
    }
    assert!(
        moment.iter().all(|m| m.abs() < 2.0),
        "map centroid {moment:?} Å"
    );
}
