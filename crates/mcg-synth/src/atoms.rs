//! Atomic models read from PDB and mmCIF files.
//!
//! Only the first model of a file is read (up to the first `ENDMDL` in a PDB file; the rows
//! whose `pdbx_PDB_model_num` equals the first row's in an mmCIF file). Of alternate locations
//! only the blank one and the first identifier met in the file (usually `A`) are kept, so that
//! no atom is counted twice in a density.
//!
//! Elements come from the element columns (PDB columns 77–78, mmCIF `type_symbol`); where those
//! are blank they are inferred from the atom name and its residue (see [`infer_element`]).

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::SynthError;

/// A chemical element, stored as its atomic number (`0` for an unknown element).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Element(u8);

impl Element {
    /// An element the reader could not determine; it has no atomic number.
    pub const UNKNOWN: Element = Element(0);
    /// Hydrogen, Z = 1.
    pub const H: Element = Element(1);
    /// Carbon, Z = 6.
    pub const C: Element = Element(6);
    /// Nitrogen, Z = 7.
    pub const N: Element = Element(7);
    /// Oxygen, Z = 8.
    pub const O: Element = Element(8);
    /// Phosphorus, Z = 15.
    pub const P: Element = Element(15);
    /// Sulfur, Z = 16.
    pub const S: Element = Element(16);

    /// The element of atomic number `z` (1 to 92), or `None`.
    pub fn from_atomic_number(z: u8) -> Option<Self> {
        (1..=SYMBOLS.len())
            .contains(&usize::from(z))
            .then_some(Self(z))
    }

    /// The element of a symbol, case-insensitive and ignoring surrounding blanks (`"FE"`,
    /// `"Fe"`, `" N"`); deuterium and tritium (`D`, `T`) are hydrogen. `None` when the symbol
    /// names no element.
    pub fn from_symbol(symbol: &str) -> Option<Self> {
        let s = symbol.trim();
        if s.eq_ignore_ascii_case("D") || s.eq_ignore_ascii_case("T") {
            return Some(Self::H);
        }
        SYMBOLS
            .iter()
            .position(|known| known.eq_ignore_ascii_case(s))
            .map(|i| Self(i as u8 + 1))
    }

    /// Atomic number Z (number of electrons of the neutral atom); `0` for [`Element::UNKNOWN`].
    pub fn atomic_number(self) -> u8 {
        self.0
    }

    /// The symbol in its usual case (`"Fe"`), or `"X"` for an unknown element.
    pub fn symbol(self) -> &'static str {
        match self.0 {
            0 => "X",
            z => SYMBOLS.get(usize::from(z) - 1).copied().unwrap_or("X"),
        }
    }

    /// Whether the element is known (has an atomic number).
    pub fn is_known(self) -> bool {
        self.0 != 0
    }

    /// Whether the element is hydrogen (including deuterium and tritium).
    pub fn is_hydrogen(self) -> bool {
        self == Self::H
    }
}

/// One atom of a model. Positions are in Å in the file's frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Atom {
    /// Serial number (PDB columns 7–11, mmCIF `id`); where that is not a decimal number
    /// (hybrid-36, `*****` past 99,999 atoms) the atom's 1-based position among the atoms read.
    pub serial: u32,
    /// Atom name without surrounding blanks (`"CA"`, `"HT1"`, `"OXT"`).
    pub name: String,
    /// Residue name (`"ALA"`, `"HSD"`, `"HOH"`).
    pub residue_name: String,
    /// Chain identifier (PDB column 22, mmCIF `auth_asym_id`); empty when blank.
    pub chain: String,
    /// Residue sequence number (PDB columns 23–26, mmCIF `auth_seq_id`).
    pub residue_number: i32,
    /// Insertion code (PDB column 27, mmCIF `pdbx_PDB_ins_code`), `None` when blank.
    pub insertion_code: Option<char>,
    /// Chemical element, from the element columns or inferred from the name.
    pub element: Element,
    /// Cartesian position in Å.
    pub position: [f64; 3],
    /// Occupancy (0 to 1); 1 when the file leaves it blank.
    pub occupancy: f64,
    /// Isotropic B-factor in Å²; 0 when the file leaves it blank.
    pub b_factor: f64,
    /// Whether the atom came from a `HETATM` record (mmCIF `group_PDB`).
    pub hetero: bool,
}

/// The atoms of one model of a structure, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AtomicModel {
    /// The atoms, in file order.
    pub atoms: Vec<Atom>,
}

impl AtomicModel {
    /// Reads a PDB or mmCIF file, chosen by extension: `.pdb`, `.ent` → PDB; `.cif`, `.mmcif`
    /// → mmCIF (case-insensitive).
    pub fn read_model(path: &Path) -> Result<Self, SynthError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("pdb" | "ent") => Self::read_pdb(path),
            Some("cif" | "mmcif") => Self::read_mmcif(path),
            _ => Err(SynthError::UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }

    /// Reads the first model of a PDB file (`ATOM` and `HETATM` records, fixed columns).
    pub fn read_pdb(path: &Path) -> Result<Self, SynthError> {
        Self::parse_pdb(&read_bytes(path)?, path)
    }

    /// Reads the first model of the `_atom_site` loop of an mmCIF file.
    pub fn read_mmcif(path: &Path) -> Result<Self, SynthError> {
        Self::parse_mmcif(&read_bytes(path)?, path)
    }

    /// Parses the text of a PDB file; `source` names it in errors.
    pub fn parse_pdb(bytes: &[u8], source: &Path) -> Result<Self, SynthError> {
        pdb::parse(bytes, source)
    }

    /// Parses the text of an mmCIF file; `source` names it in errors.
    pub fn parse_mmcif(bytes: &[u8], source: &Path) -> Result<Self, SynthError> {
        mmcif::parse(bytes, source)
    }

    /// The atoms of `chain` whose residue number lies in `residues` (inclusive), in file order.
    pub fn select(&self, chain: &str, residues: RangeInclusive<i32>) -> AtomicModel {
        AtomicModel {
            atoms: self
                .atoms
                .iter()
                .filter(|a| a.chain == chain && residues.contains(&a.residue_number))
                .cloned()
                .collect(),
        }
    }

    /// The unweighted mean position (Å) of the heavy atoms: those of a known element other than
    /// hydrogen. `None` when there is none.
    pub fn heavy_atom_centroid(&self) -> Option<[f64; 3]> {
        let mut sum = [0.0; 3];
        let mut count = 0usize;
        for atom in self
            .atoms
            .iter()
            .filter(|a| a.element.is_known() && !a.element.is_hydrogen())
        {
            for (s, p) in sum.iter_mut().zip(atom.position) {
                *s += p;
            }
            count += 1;
        }
        (count > 0).then(|| sum.map(|s| s / count as f64))
    }

    /// The atoms as density inputs: each position relative to `origin` (Å) with its atomic
    /// number Z as weight (occupancy is not applied). Fails on an atom of unknown element.
    pub fn density_atoms(&self, origin: [f64; 3]) -> Result<Vec<([f64; 3], f64)>, SynthError> {
        self.atoms
            .iter()
            .map(|a| {
                if !a.element.is_known() {
                    return Err(SynthError::UnknownElement {
                        serial: a.serial,
                        name: a.name.clone(),
                        residue_name: a.residue_name.clone(),
                        chain: a.chain.clone(),
                        residue_number: a.residue_number,
                    });
                }
                let p = a.position;
                Ok((
                    [p[0] - origin[0], p[1] - origin[1], p[2] - origin[2]],
                    f64::from(a.element.atomic_number()),
                ))
            })
            .collect()
    }

    /// Appends the atoms of `other` (to combine chains into one model).
    pub fn extend(&mut self, other: &AtomicModel) {
        self.atoms.extend(other.atoms.iter().cloned());
    }
}

/// Infers the element of an atom whose file leaves the element blank.
///
/// - `name` is the trimmed atom name; leading digits (old-style `1HG1`) are skipped.
/// - In standard residues (amino acids, including CHARMM/AMBER histidine variants, nucleotides,
///   water) and in every `ATOM` record the first letter is the element: `CA` is the alpha
///   carbon, `HT1` a hydrogen, `OT1` an oxygen, `NZ` a nitrogen.
/// - In `HETATM` records of other residues a name that starts with a common 2-letter element
///   (`FE`, `ZN`, `CL`, `MG`, `SE`, …) is that element when `two_letter_hint` says so: in a PDB
///   file when the name starts in column 13 (the convention right-justifies 1-letter elements
///   in columns 13–14), in both formats when the name equals the residue name (ions). Four-letter
///   names starting with `H` stay hydrogens.
///
/// Returns [`Element::UNKNOWN`] when no rule applies.
pub fn infer_element(
    name: &str,
    residue_name: &str,
    hetero: bool,
    two_letter_hint: bool,
) -> Element {
    let letters = name.trim().trim_start_matches(|c: char| c.is_ascii_digit());
    let residue = residue_name.trim();
    let mut chars = letters.chars();
    let Some(first) = chars.next().map(|c| c.to_ascii_uppercase()) else {
        return Element::UNKNOWN;
    };
    let standard = is_standard_residue(residue);
    if hetero && !standard {
        if let Some(second) = chars.next() {
            let pair: String = [first, second.to_ascii_uppercase()].iter().collect();
            let hydrogen_name = first == 'H' && letters.len() == 4;
            let hinted = two_letter_hint || letters.eq_ignore_ascii_case(residue);
            if hinted && !hydrogen_name && COMMON_TWO_LETTER.contains(&pair.as_str()) {
                return Element::from_symbol(&pair).unwrap_or(Element::UNKNOWN);
            }
        }
        return Element::from_symbol(&first.to_string()).unwrap_or(Element::UNKNOWN);
    }
    match first {
        'H' => Element::H,
        'C' => Element::C,
        'N' => Element::N,
        'O' => Element::O,
        'P' => Element::P,
        'S' => Element::S,
        'D' => Element::H,
        _ => Element::UNKNOWN,
    }
}

/// Element symbols by atomic number − 1 (H … U).
const SYMBOLS: [&str; 92] = [
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl",
    "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As",
    "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In",
    "Sn", "Sb", "Te", "I", "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb",
    "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl",
    "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac", "Th", "Pa", "U",
];

/// Two-letter elements common in macromolecular structures (ions, cofactors, heavy-atom
/// derivatives), the only ones inferred from atom names.
const COMMON_TWO_LETTER: [&str; 25] = [
    "LI", "NA", "MG", "AL", "CL", "CA", "MN", "FE", "CO", "NI", "CU", "ZN", "GA", "SE", "BR", "RB",
    "SR", "AG", "CD", "CS", "BA", "PT", "AU", "HG", "PB",
];

/// Residues whose atom names always start with their 1-letter element.
fn is_standard_residue(residue: &str) -> bool {
    const STANDARD: [&str; 47] = [
        "ALA", "ARG", "ASN", "ASP", "CYS", "GLN", "GLU", "GLY", "HIS", "ILE", "LEU", "LYS", "MET",
        "PHE", "PRO", "SER", "THR", "TRP", "TYR", "VAL", "HSD", "HSE", "HSP", "HID", "HIE", "HIP",
        "CYX", "ASH", "GLH", "LYN", "A", "C", "G", "U", "I", "DA", "DC", "DG", "DT", "DI", "ADE",
        "CYT", "GUA", "THY", "URA", "HOH", "WAT",
    ];
    STANDARD.iter().any(|s| s.eq_ignore_ascii_case(residue))
        || ["TIP3", "TIP", "SOL"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(residue))
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, SynthError> {
    mcg_fsio::budget::read_whole(path).map_err(|e| SynthError::Io {
        path: e.path,
        source: e.source,
    })
}

/// Keeps the blank alternate location and the first identifier met in the file.
#[derive(Debug, Default)]
struct AltLocFilter {
    first: Option<String>,
}

impl AltLocFilter {
    fn keep(&mut self, alt: &str) -> bool {
        if alt.is_empty() {
            return true;
        }
        match &self.first {
            Some(first) => first == alt,
            None => {
                self.first = Some(alt.to_string());
                true
            }
        }
    }
}

fn parse_error(path: &Path, line: usize, field: &'static str, message: String) -> SynthError {
    SynthError::Parse {
        path: PathBuf::from(path),
        line,
        field,
        message,
    }
}

/// Parses a finite floating-point number, allowing an mmCIF standard uncertainty `1.23(4)`.
fn parse_f64(text: &str) -> Option<f64> {
    let text = text.trim();
    let text = match text.find('(') {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => text,
    };
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

mod pdb {
    //! Fixed-column PDB records (wwPDB format 3.3, `ATOM`/`HETATM`).

    use super::*;

    pub(super) fn parse(bytes: &[u8], path: &Path) -> Result<AtomicModel, SynthError> {
        let mut atoms = Vec::new();
        let mut alt = AltLocFilter::default();
        for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line_no = index + 1;
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            let record = text(line, 0, 6);
            let record = record.trim_end();
            if record == "ENDMDL" || record == "END" {
                break;
            }
            let hetero = match record {
                "ATOM" => false,
                "HETATM" => true,
                _ => continue,
            };
            if !alt.keep(text(line, 16, 17).trim()) {
                continue;
            }
            atoms.push(parse_atom(line, hetero, atoms.len() + 1, path, line_no)?);
        }
        Ok(AtomicModel { atoms })
    }

    fn parse_atom(
        line: &[u8],
        hetero: bool,
        ordinal: usize,
        path: &Path,
        line_no: usize,
    ) -> Result<Atom, SynthError> {
        let err = |field, message: String| parse_error(path, line_no, field, message);
        let serial = text(line, 6, 11)
            .trim()
            .parse::<u32>()
            .unwrap_or(u32::try_from(ordinal).unwrap_or(u32::MAX));
        let name_field = text(line, 12, 16);
        let name = name_field.trim().to_string();
        if name.is_empty() {
            return Err(err("atom name (columns 13–16)", "blank".into()));
        }
        let residue_name = text(line, 17, 20).trim().to_string();
        let chain = text(line, 21, 22).trim().to_string();
        let residue_field = text(line, 22, 26);
        let residue_number = residue_field.trim().parse::<i32>().map_err(|_| {
            err(
                "residue number (columns 23–26)",
                format!("{:?} is not an integer", residue_field.trim()),
            )
        })?;
        let insertion_code = text(line, 26, 27).trim().chars().next();
        let mut position = [0.0; 3];
        for (axis, (start, field)) in [
            (30, "x (columns 31–38)"),
            (38, "y (columns 39–46)"),
            (46, "z (columns 47–54)"),
        ]
        .into_iter()
        .enumerate()
        {
            let value = text(line, start, start + 8);
            position[axis] = parse_f64(&value)
                .ok_or_else(|| err(field, format!("{:?} is not a finite number", value.trim())))?;
        }
        let occupancy = optional_number(line, 54, 60, 1.0)
            .ok_or_else(|| err("occupancy (columns 55–60)", "not a number".into()))?;
        let b_factor = optional_number(line, 60, 66, 0.0)
            .ok_or_else(|| err("B-factor (columns 61–66)", "not a number".into()))?;
        let symbol = text(line, 76, 78);
        let symbol = symbol.trim();
        let element = if symbol.is_empty() {
            let two_letter_hint = name_field
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic());
            infer_element(&name, &residue_name, hetero, two_letter_hint)
        } else {
            Element::from_symbol(symbol).ok_or_else(|| {
                err(
                    "element (columns 77–78)",
                    format!("{symbol:?} is no element symbol"),
                )
            })?
        };
        Ok(Atom {
            serial,
            name,
            residue_name,
            chain,
            residue_number,
            insertion_code,
            element,
            position,
            occupancy,
            b_factor,
            hetero,
        })
    }

    /// Columns `start..end` (0-based, end exclusive) clipped to the line, as text.
    fn text(line: &[u8], start: usize, end: usize) -> String {
        let end = end.min(line.len());
        let start = start.min(end);
        String::from_utf8_lossy(&line[start..end]).into_owned()
    }

    /// A number in columns `start..end`, `default` when blank, `None` when not a number.
    fn optional_number(line: &[u8], start: usize, end: usize, default: f64) -> Option<f64> {
        let value = text(line, start, end);
        if value.trim().is_empty() {
            Some(default)
        } else {
            parse_f64(&value)
        }
    }
}

mod mmcif {
    //! The `_atom_site` loop of an mmCIF (PDBx) file.

    use super::*;

    pub(super) fn parse(bytes: &[u8], path: &Path) -> Result<AtomicModel, SynthError> {
        let text = String::from_utf8_lossy(bytes);
        let tokens = tokenize(&text, path)?;
        let (tags, values, loop_line) = atom_site_loop(&tokens).ok_or_else(|| {
            parse_error(
                path,
                1,
                "_atom_site loop",
                "no _atom_site loop in the file".into(),
            )
        })?;
        if values.len() % tags.len() != 0 {
            return Err(parse_error(
                path,
                loop_line,
                "_atom_site loop",
                format!(
                    "{} values do not fill rows of {} columns",
                    values.len(),
                    tags.len()
                ),
            ));
        }
        let column = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| tags.iter().position(|t| t.eq_ignore_ascii_case(n)))
        };
        let required = |names: &[&str], field: &'static str| {
            column(names).ok_or_else(|| {
                parse_error(
                    path,
                    loop_line,
                    field,
                    "column missing from _atom_site".into(),
                )
            })
        };
        let c_name = required(
            &["auth_atom_id", "label_atom_id"],
            "_atom_site.auth_atom_id",
        )?;
        let c_x = required(&["Cartn_x"], "_atom_site.Cartn_x")?;
        let c_y = required(&["Cartn_y"], "_atom_site.Cartn_y")?;
        let c_z = required(&["Cartn_z"], "_atom_site.Cartn_z")?;
        let c_group = column(&["group_PDB"]);
        let c_id = column(&["id"]);
        let c_residue = column(&["auth_comp_id", "label_comp_id"]);
        let c_chain = column(&["auth_asym_id", "label_asym_id"]);
        let c_seq = column(&["auth_seq_id", "label_seq_id"]);
        let c_ins = column(&["pdbx_PDB_ins_code"]);
        let c_element = column(&["type_symbol"]);
        let c_alt = column(&["label_alt_id"]);
        let c_occupancy = column(&["occupancy"]);
        let c_b = column(&["B_iso_or_equiv"]);
        let c_model = column(&["pdbx_PDB_model_num"]);

        let mut atoms = Vec::new();
        let mut alt = AltLocFilter::default();
        let mut first_model: Option<&str> = None;
        for row in values.chunks_exact(tags.len()) {
            let get = |c: Option<usize>| c.map(|c| row[c].text).filter(|v| !is_null(v));
            let line = row[0].line;
            let err = |field, message: String| parse_error(path, line, field, message);
            if let Some(model) = get(c_model) {
                match first_model {
                    None => first_model = Some(model),
                    Some(first) if first != model => continue,
                    Some(_) => {}
                }
            }
            if !alt.keep(get(c_alt).unwrap_or("")) {
                continue;
            }
            let hetero = get(c_group).is_some_and(|g| g.eq_ignore_ascii_case("HETATM"));
            let name = get(Some(c_name))
                .ok_or_else(|| err("_atom_site.auth_atom_id", "missing".into()))?
                .to_string();
            let residue_name = get(c_residue).unwrap_or("").to_string();
            let chain = get(c_chain).unwrap_or("").to_string();
            let residue_number = match get(c_seq) {
                None => 0,
                Some(v) => v.parse::<i32>().map_err(|_| {
                    err("_atom_site.auth_seq_id", format!("{v:?} is not an integer"))
                })?,
            };
            let mut position = [0.0; 3];
            for (axis, (c, field)) in [
                (c_x, "_atom_site.Cartn_x"),
                (c_y, "_atom_site.Cartn_y"),
                (c_z, "_atom_site.Cartn_z"),
            ]
            .into_iter()
            .enumerate()
            {
                let v = get(Some(c)).unwrap_or("?");
                position[axis] = parse_f64(v)
                    .ok_or_else(|| err(field, format!("{v:?} is not a finite number")))?;
            }
            let number = |c, default, field| match get(c) {
                None => Ok(default),
                Some(v) => {
                    parse_f64(v).ok_or_else(|| err(field, format!("{v:?} is not a finite number")))
                }
            };
            let occupancy = number(c_occupancy, 1.0, "_atom_site.occupancy")?;
            let b_factor = number(c_b, 0.0, "_atom_site.B_iso_or_equiv")?;
            let element = match get(c_element) {
                None => infer_element(&name, &residue_name, hetero, false),
                Some(symbol) => Element::from_symbol(symbol).ok_or_else(|| {
                    err(
                        "_atom_site.type_symbol",
                        format!("{symbol:?} is no element symbol"),
                    )
                })?,
            };
            let ordinal = atoms.len() + 1;
            let serial = get(c_id)
                .and_then(|v| v.parse::<u32>().ok())
                .unwrap_or(u32::try_from(ordinal).unwrap_or(u32::MAX));
            atoms.push(Atom {
                serial,
                name,
                residue_name,
                chain,
                residue_number,
                insertion_code: get(c_ins).and_then(|v| v.chars().next()),
                element,
                position,
                occupancy,
                b_factor,
                hetero,
            });
        }
        Ok(AtomicModel { atoms })
    }

    /// One CIF token with the 1-based line it starts on.
    #[derive(Debug, Clone, Copy)]
    struct Token<'a> {
        text: &'a str,
        line: usize,
        /// Quoted or text-field values are never keywords or tags.
        quoted: bool,
    }

    fn is_null(value: &str) -> bool {
        value == "." || value == "?"
    }

    /// The tags (without the `_atom_site.` prefix) and values of the first `_atom_site` loop,
    /// and the line of its `loop_`.
    fn atom_site_loop<'a>(tokens: &[Token<'a>]) -> Option<(Vec<&'a str>, Vec<Token<'a>>, usize)> {
        let mut i = 0;
        while i < tokens.len() {
            let t = tokens[i];
            let is_loop = !t.quoted && t.text.eq_ignore_ascii_case("loop_");
            let next_is_atom_site = tokens.get(i + 1).is_some_and(|n| {
                !n.quoted
                    && n.text.len() > 11
                    && n.text
                        .get(..11)
                        .is_some_and(|p| p.eq_ignore_ascii_case("_atom_site."))
            });
            if !(is_loop && next_is_atom_site) {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            let mut tags = Vec::new();
            while let Some(tag) = tokens
                .get(j)
                .filter(|n| !n.quoted && n.text.starts_with('_'))
            {
                tags.push(tag.text.get(11..).unwrap_or(""));
                j += 1;
            }
            let mut values = Vec::new();
            while let Some(&v) = tokens.get(j) {
                if !v.quoted && is_keyword_or_tag(v.text) {
                    break;
                }
                values.push(v);
                j += 1;
            }
            return Some((tags, values, t.line));
        }
        None
    }

    fn is_keyword_or_tag(text: &str) -> bool {
        let lower = text.to_ascii_lowercase();
        text.starts_with('_')
            || lower == "loop_"
            || lower == "stop_"
            || lower.starts_with("data_")
            || lower.starts_with("save_")
            || lower.starts_with("global_")
    }

    /// Splits CIF text into tokens: bare words, quoted strings (a quote closes only before a
    /// blank or the line end), `;` text fields, with `#` comments dropped.
    fn tokenize<'a>(text: &'a str, path: &Path) -> Result<Vec<Token<'a>>, SynthError> {
        let mut tokens = Vec::new();
        let mut lines = text.split('\n').enumerate();
        while let Some((index, raw)) = lines.next() {
            let line_no = index + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if let Some(first) = line.strip_prefix(';') {
                // A text field runs to the next line that starts with ';'. Its content is kept
                // as the first line only: no `_atom_site` value is a multi-line text.
                let mut closed = false;
                for (_, next) in lines.by_ref() {
                    if next.starts_with(';') {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(parse_error(
                        path,
                        line_no,
                        "text field",
                        "no closing ';' line".into(),
                    ));
                }
                tokens.push(Token {
                    text: first.trim(),
                    line: line_no,
                    quoted: true,
                });
                continue;
            }
            let bytes = line.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let b = bytes[i];
                if b.is_ascii_whitespace() {
                    i += 1;
                } else if b == b'#' {
                    break;
                } else if b == b'\'' || b == b'"' {
                    let start = i + 1;
                    let mut end = None;
                    let mut k = start;
                    while k < bytes.len() {
                        if bytes[k] == b && bytes.get(k + 1).is_none_or(|n| n.is_ascii_whitespace())
                        {
                            end = Some(k);
                            break;
                        }
                        k += 1;
                    }
                    let Some(end) = end else {
                        return Err(parse_error(
                            path,
                            line_no,
                            "quoted value",
                            "no closing quote on the line".into(),
                        ));
                    };
                    tokens.push(Token {
                        text: &line[start..end],
                        line: line_no,
                        quoted: true,
                    });
                    i = end + 1;
                } else {
                    let start = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                        i += 1;
                    }
                    tokens.push(Token {
                        text: &line[start..i],
                        line: line_no,
                        quoted: false,
                    });
                }
            }
        }
        Ok(tokens)
    }
}
