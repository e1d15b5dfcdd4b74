//! Reading PDB and mmCIF files: fields, element inference, first model only, errors, no panics.

use std::io::Write;
use std::path::Path;

use mcg_synth::atoms::infer_element;
use mcg_synth::{AtomicModel, Element, SynthError};
use proptest::prelude::*;

const PDB: &str = "\
HEADER    TEST
ATOM      1  N   ALA A   2    -167.603 -86.615  53.781  1.00 70.16           N
ATOM      2  CA AALA A   2    -168.653 -85.599  53.488  0.60 70.30           C
ATOM      3  CA BALA A   2    -168.000 -85.000  53.000  0.40 70.30           C
ATOM      4  SD  MET B  10A      1.000   2.000   3.000
HETATM    5 ZN    ZN A 901      10.000  11.000  12.000  1.00 20.00
HETATM    6 FE   HEM A 902       0.500   0.250   0.125  1.00 20.00
HETATM    7  CD  LIG A 903       0.000   0.000   0.000  1.00 20.00
HETATM    8 HG21 LIG A 903       0.000   0.000   0.000  1.00 20.00
ENDMDL
MODEL        2
ATOM      9  N   ALA A   2       0.000   0.000   0.000  1.00 70.16           N
ENDMDL
";

fn parse(text: &str) -> Result<AtomicModel, SynthError> {
    AtomicModel::parse_pdb(text.as_bytes(), Path::new("test.pdb"))
}

#[test]
fn pdb_fields_first_model_and_first_alt_loc() {
    let model = parse(PDB).unwrap();
    let names: Vec<&str> = model.atoms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["N", "CA", "SD", "ZN", "FE", "CD", "HG21"]);
    let ca = &model.atoms[1];
    assert_eq!(ca.serial, 2);
    assert_eq!(ca.residue_name, "ALA");
    assert_eq!(ca.chain, "A");
    assert_eq!(ca.residue_number, 2);
    assert_eq!(ca.position, [-168.653, -85.599, 53.488]);
    assert_eq!(ca.occupancy, 0.6);
    assert_eq!(ca.b_factor, 70.3);
    assert_eq!(ca.element, Element::C);
    let sd = &model.atoms[2];
    assert_eq!((sd.chain.as_str(), sd.insertion_code), ("B", Some('A')));
    // Blank occupancy and B-factor take their defaults.
    assert_eq!((sd.occupancy, sd.b_factor), (1.0, 0.0));
    let elements: Vec<&str> = model.atoms.iter().map(|a| a.element.symbol()).collect();
    assert_eq!(elements, ["N", "C", "S", "Zn", "Fe", "C", "H"]);
    assert!(model.atoms[3].hetero && !model.atoms[0].hetero);
}

#[test]
fn element_inference_follows_residue_context() {
    // (name, residue, HETATM, name starts in column 13) → element
    let cases = [
        ("CA", "ALA", false, true, "C"),
        ("CA", "GLY", false, false, "C"),
        ("HT1", "MET", false, true, "H"),
        ("OT1", "LYS", false, true, "O"),
        ("CD1", "ILE", false, true, "C"),
        ("NZ", "LYS", false, true, "N"),
        ("SD", "MET", false, true, "S"),
        ("HD11", "LEU", false, true, "H"),
        ("1HG1", "VAL", false, true, "H"),
        ("CA", "CA", true, false, "Ca"),
        ("CL", "LIG", true, true, "Cl"),
        ("CL1", "LIG", true, false, "C"),
        ("SE", "MSE", true, true, "Se"),
        ("HG12", "LIG", true, true, "H"),
        ("P", "DA", false, false, "P"),
        ("", "ALA", false, false, "X"),
        ("XX", "ALA", false, true, "X"),
    ];
    for (name, residue, hetero, hint, want) in cases {
        let got = infer_element(name, residue, hetero, hint);
        assert_eq!(got.symbol(), want, "{name} in {residue}");
    }
    assert_eq!(Element::from_symbol("fe").unwrap().atomic_number(), 26);
    assert_eq!(Element::from_symbol(" D").unwrap(), Element::H);
    assert_eq!(Element::from_symbol("Xy"), None);
    assert_eq!(Element::from_atomic_number(92).unwrap().symbol(), "U");
    assert_eq!(Element::from_atomic_number(93), None);
    let z: Vec<u8> = ["H", "C", "N", "O", "P", "S"]
        .iter()
        .map(|s| Element::from_symbol(s).unwrap().atomic_number())
        .collect();
    assert_eq!(z, [1, 6, 7, 8, 15, 16]);
}

#[test]
fn pdb_errors_name_file_line_and_field() {
    let bad_x = "REMARK\nREMARK\nATOM      1  N   ALA A   2    -16x.603 -86.615  53.781\n";
    let message = parse(bad_x).unwrap_err().to_string();
    assert!(message.contains("test.pdb:3:"), "{message}");
    assert!(message.contains("x (columns 31–38)"), "{message}");

    let short = "ATOM      1  N   ALA A   2    -16.603\n";
    let message = parse(short).unwrap_err().to_string();
    assert!(
        message.contains("test.pdb:1:") && message.contains("y (columns 39–46)"),
        "{message}"
    );

    let bad_residue = "ATOM      1  N   ALA A  x2      1.000   2.000   3.000\n";
    let message = parse(bad_residue).unwrap_err().to_string();
    assert!(
        message.contains("residue number (columns 23–26)"),
        "{message}"
    );

    let bad_element =
        "ATOM      1  N   ALA A   2      1.000   2.000   3.000  1.00  0.00          QQ\n";
    let message = parse(bad_element).unwrap_err().to_string();
    assert!(message.contains("element (columns 77–78)"), "{message}");
}

#[test]
fn read_model_chooses_the_format_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let pdb = dir.path().join("x.PDB");
    std::fs::write(&pdb, PDB).unwrap();
    assert_eq!(AtomicModel::read_model(&pdb).unwrap().atoms.len(), 7);
    let other = dir.path().join("x.txt");
    std::fs::write(&other, PDB).unwrap();
    assert!(matches!(
        AtomicModel::read_model(&other),
        Err(SynthError::UnknownFormat { .. })
    ));
    let missing = dir.path().join("missing.cif");
    let message = AtomicModel::read_model(&missing).unwrap_err().to_string();
    assert!(message.contains("missing.cif"), "{message}");
}

const CIF: &str = r#"data_TEST
# a comment
_struct.title
;A text field
spanning lines
;
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.type_symbol
_atom_site.label_atom_id
_atom_site.label_alt_id
_atom_site.label_comp_id
_atom_site.label_asym_id
_atom_site.label_seq_id
_atom_site.pdbx_PDB_ins_code
_atom_site.Cartn_x
_atom_site.Cartn_y
_atom_site.Cartn_z
_atom_site.occupancy
_atom_site.B_iso_or_equiv
_atom_site.auth_seq_id
_atom_site.auth_asym_id
_atom_site.pdbx_PDB_model_num
ATOM   1 P   P     . DA  A 1 ? 1.5(2) -2.0 3.25 1.0 30.0 5 B 1
ATOM   2 O   "O5'" . DA  A 1 ? 0.0 0.0 0.0 ? ? 5 B 1
ATOM   3 C   'C1 ' A DA  A 1 A 1 2 3 0.5 10 5 B 1
ATOM   4 C   'C1 ' B DA  A 1 A 9 9 9 0.5 10 5 B 1
HETATM 5 ZN  ZN    . ZN  C . ? 7 8 9 1 20 101 B 1
HETATM 6 ?   CA    . CA  D . ? 1 1 1 1 20 102 B 1
ATOM   7 P   P     . DA  A 1 ? 0 0 0 1 30 5 B 2
#
loop_
_atom_type.symbol
C
"#;

#[test]
fn mmcif_atom_site_loop() {
    let model = AtomicModel::parse_mmcif(CIF.as_bytes(), Path::new("t.cif")).unwrap();
    let names: Vec<&str> = model.atoms.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["P", "O5'", "C1 ", "ZN", "CA"]);
    let p = &model.atoms[0];
    assert_eq!(p.position, [1.5, -2.0, 3.25]);
    assert_eq!((p.chain.as_str(), p.residue_number), ("B", 5));
    assert_eq!((p.residue_name.as_str(), p.b_factor), ("DA", 30.0));
    let o = &model.atoms[1];
    assert_eq!(
        (o.occupancy, o.b_factor, o.insertion_code),
        (1.0, 0.0, None)
    );
    assert_eq!(model.atoms[2].insertion_code, Some('A'));
    let elements: Vec<&str> = model.atoms.iter().map(|a| a.element.symbol()).collect();
    assert_eq!(elements, ["P", "O", "C", "Zn", "Ca"]);
    assert!(model.atoms[3].hetero);
}

#[test]
fn mmcif_errors_name_file_line_and_field() {
    let bad = CIF.replace(
        "ATOM   2 O   \"O5'\" . DA  A 1 ? 0.0",
        "ATOM   2 O   \"O5'\" . DA  A 1 ? zero",
    );
    let message = AtomicModel::parse_mmcif(bad.as_bytes(), Path::new("t.cif"))
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("t.cif:26:") && message.contains("Cartn_x"),
        "{message}"
    );
    let ragged = CIF.replace(
        "HETATM 5 ZN  ZN    . ZN  C . ? 7 8 9 1 20 101 B 1",
        "HETATM 5 ZN",
    );
    let message = AtomicModel::parse_mmcif(ragged.as_bytes(), Path::new("t.cif"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("_atom_site loop"), "{message}");
    let none = AtomicModel::parse_mmcif(b"data_x\n_cell.length_a 10\n", Path::new("t.cif"));
    assert!(none.unwrap_err().to_string().contains("no _atom_site loop"));
}

#[test]
fn mmcif_and_pdb_of_one_structure_agree() {
    let Some(path) = mcg_testdata::shared("structures/hsp90/2cg9_chainA.pdb") else {
        return;
    };
    let pdb = AtomicModel::read_pdb(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cif_path = dir.path().join("chainA.cif");
    let mut f = std::fs::File::create(&cif_path).unwrap();
    writeln!(f, "data_2cg9\nloop_").unwrap();
    for tag in [
        "group_PDB",
        "id",
        "type_symbol",
        "auth_atom_id",
        "auth_comp_id",
        "auth_asym_id",
        "auth_seq_id",
        "Cartn_x",
        "Cartn_y",
        "Cartn_z",
        "occupancy",
        "B_iso_or_equiv",
    ] {
        writeln!(f, "_atom_site.{tag}").unwrap();
    }
    for a in &pdb.atoms {
        writeln!(
            f,
            "ATOM {} {} '{}' {} {} {} {} {} {} {} {}",
            a.serial,
            a.element.symbol(),
            a.name,
            a.residue_name,
            a.chain,
            a.residue_number,
            a.position[0],
            a.position[1],
            a.position[2],
            a.occupancy,
            a.b_factor
        )
        .unwrap();
    }
    drop(f);
    let cif = AtomicModel::read_model(&cif_path).unwrap();
    assert_eq!(cif, pdb);
}

/// One real line of each kind, to mutate.
const SEED_LINES: [&str; 6] = [
    "ATOM      2  CA  ALA A   2    -168.653 -85.599  53.488  1.00 70.30           C",
    "HETATM    5 ZN    ZN A 901      10.000  11.000  12.000  1.00 20.00",
    "ATOM      2 HT1  MET     1     -10.557  27.134  11.954  1.00  0.00      4AKE",
    "MODEL        1",
    "ENDMDL",
    "ATOM   3 C   'C1 ' A DA  A 1 A 1 2 3 0.5 10 5 B 1",
];

fn mutated_text() -> impl Strategy<Value = Vec<u8>> {
    let line = (
        0..SEED_LINES.len(),
        prop::collection::vec((0usize..90, any::<u8>()), 0..6),
    )
        .prop_map(|(i, edits)| {
            let mut bytes = SEED_LINES[i].as_bytes().to_vec();
            for (pos, byte) in edits {
                if pos < bytes.len() {
                    bytes[pos] = byte;
                } else {
                    bytes.truncate(pos % (bytes.len() + 1));
                }
            }
            bytes
        });
    let random = prop::collection::vec(any::<u8>(), 0..100);
    prop::collection::vec(prop_oneof![line, random], 0..12).prop_map(|lines| lines.join(&b'\n'))
}

fn check_model(result: Result<AtomicModel, SynthError>, source: &str) -> Result<(), TestCaseError> {
    match result {
        Ok(model) => {
            for a in &model.atoms {
                prop_assert!(a.position.iter().all(|c| c.is_finite()));
                prop_assert!(a.occupancy.is_finite() && a.b_factor.is_finite());
            }
        }
        Err(e) => prop_assert!(e.to_string().contains(source), "{e}"),
    }
    Ok(())
}

proptest! {
    #[test]
    fn pdb_reader_never_panics(text in mutated_text()) {
        let (model, largest) = mcg_testdata::alloc::measured(|| {
            AtomicModel::parse_pdb(&text, Path::new("fuzz.pdb"))
        });
        prop_assert!(largest <= mcg_testdata::alloc::bound(text.len()), "{largest} bytes");
        check_model(model, "fuzz.pdb")?;
    }

    #[test]
    fn mmcif_reader_never_panics(body in mutated_text(), tags in 0usize..18) {
        let all = [
            "group_PDB", "id", "type_symbol", "label_atom_id", "label_alt_id", "label_comp_id",
            "label_asym_id", "label_seq_id", "pdbx_PDB_ins_code", "Cartn_x", "Cartn_y", "Cartn_z",
            "occupancy", "B_iso_or_equiv", "auth_seq_id", "auth_asym_id", "pdbx_PDB_model_num",
        ];
        let mut text = b"data_x\nloop_\n".to_vec();
        for tag in &all[..tags.min(all.len())] {
            text.extend_from_slice(format!("_atom_site.{tag}\n").as_bytes());
        }
        text.extend_from_slice(&body);
        let (model, largest) = mcg_testdata::alloc::measured(|| {
            AtomicModel::parse_mmcif(&text, Path::new("fuzz.cif"))
        });
        prop_assert!(largest <= mcg_testdata::alloc::bound(text.len()), "{largest} bytes");
        check_model(model, "fuzz.cif")?;
    }
}
