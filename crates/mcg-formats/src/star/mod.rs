//! RELION STAR files: a generic reader and writer (data blocks, key–value pairs, one `loop_`
//! table per block), and the particle layer that maps RELION 3.0, 3.1 and 5 particle tables to
//! a [`ParticleSet`] and writes RELION 3.1 tables back.
//!
//! # Syntax accepted by [`parse_star`]
//! - `data_NAME` starts a block (the name may be empty); `loop_` starts its table, whose labels
//!   follow one per line (`_rlnDefocusU #3` or `_rlnDefocusU`), then one row per line.
//! - `_label value` lines outside a table are the block's key–value pairs.
//! - `#` starts a comment where a value could start (so `# version 30001` and the `#N` after
//!   labels are comments); blank lines, trailing whitespace and CRLF line ends are ignored.
//! - Values are whitespace-separated; `'…'` or `"…"` quote a value holding spaces (a quote
//!   closes only when followed by whitespace or the line end, as in CIF).
//! - A table row must fit on one line, as RELION writes it; a row with too few or too many
//!   values is an error naming the line.
//!
//! # Particle tables ([`read_particles`])
//! - RELION ≥ 3.1 (and 5): a `data_optics` block and a `data_particles` block, in either order;
//!   particles point at their optics group through `_rlnOpticsGroup` (optional when there is a
//!   single group). Voltage, Cs and amplitude contrast come from the optics table.
//! - RELION 3.0: one table (block `data_`, `data_images`, …) with the optics values per
//!   particle; particles are grouped into optics groups by their distinct (voltage, Cs,
//!   amplitude contrast, pixel size, image size).
//! - Required labels: `_rlnDefocusU`, `_rlnVoltage`, `_rlnSphericalAberration` (a particle
//!   always carries a complete CTF, and inventing a microscope would silently corrupt it).
//!   Defaults, as in RELION's own reader: `_rlnDefocusV` = `_rlnDefocusU`, `_rlnDefocusAngle`,
//!   `_rlnPhaseShift`, `_rlnCtfBfactor` and `_rlnAmplitudeContrast` 0, `_rlnCtfScalefactor` 1.
//!   `_rlnImageName` is optional (metadata-only tables).
//! - Pixel size, in order: `_rlnImagePixelSize`;
//!   `_rlnDetectorPixelSize`·10⁴/`_rlnMagnification`; [`StarOptions::apix`]; the MRC header of
//!   the first stack. A pixel size written in the file wins over the option, which fills in
//!   what the file lacks.
//! - Shifts: `_rlnOriginXAngst`/`_rlnOriginYAngst` (Å), else `_rlnOriginX`/`_rlnOriginY`
//!   (pixels, multiplied by the pixel size), else zero.
//! - Poses: `_rlnAngleRot`, `_rlnAngleTilt`, `_rlnAnglePsi`, all three or none (a lone
//!   `_rlnAnglePsi` from 2D classification is kept as an extra column, not read as a 3D pose).
//! - Every column not mapped to a field goes to [`ParticleSet::extra`] (or
//!   [`OpticsGroup::extra`]) as text, so that a conversion loses nothing.

mod parse;
mod read;
mod render;
#[cfg(test)]
mod tests;
mod write;

use parse::*;
pub(crate) use read::*;
use render::*;
pub(crate) use write::*;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt::Write as _;
use std::path::{Component, Path, PathBuf};

use mcg_physics::{CtfParams, Pose, Shift};

use crate::particles::{ImageRef, OpticsGroup, Particle, ParticleSet, resolve_path};
use crate::{FormatError, Result};

/// A parsed STAR file: its data blocks in file order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StarFile {
    /// The `data_` blocks, in file order.
    pub blocks: Vec<StarBlock>,
}

impl StarFile {
    /// The first block called `name` (the text after `data_`).
    pub fn block(&self, name: &str) -> Option<&StarBlock> {
        self.blocks.iter().find(|b| b.name == name)
    }
}

/// One `data_NAME` block: key–value pairs and at most one table.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StarBlock {
    /// The text after `data_` (may be empty).
    pub name: String,
    /// `_label value` pairs outside the table, in file order.
    pub pairs: Vec<(String, String)>,
    /// The block's `loop_` table, if it has one.
    pub table: Option<StarTable>,
}

impl StarBlock {
    /// An empty block called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            pairs: Vec::new(),
            table: None,
        }
    }

    /// The value of the key–value pair `label` (with its leading `_`).
    pub fn pair(&self, label: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, v)| v.as_str())
    }
}

/// A `loop_` table: labels and rows of text values.
///
/// All values live in one string, addressed by (start, length) spans stored row by row, so that
/// parsing a large table costs one copy of its text and no allocation per value.
#[derive(Debug, Clone, Default)]
pub struct StarTable {
    /// Column labels with their leading `_` (`_rlnDefocusU`). Renaming is fine; the number of
    /// columns is fixed when the table is created.
    pub labels: Vec<String>,
    width: usize,
    text: String,
    spans: Vec<(u32, u32)>,
}

impl StarTable {
    /// An empty table with these column labels.
    pub fn new(labels: Vec<String>) -> Self {
        let width = labels.len();
        Self {
            labels,
            width,
            text: String::new(),
            spans: Vec::new(),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.spans.len().checked_div(self.width).unwrap_or(0)
    }

    /// Whether the table has no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The index of the column labelled `label`, if present.
    pub fn column(&self, label: &str) -> Option<usize> {
        self.labels.iter().take(self.width).position(|l| l == label)
    }

    /// The value at `row`, `col`, or `None` outside the table.
    pub fn get(&self, row: usize, col: usize) -> Option<&str> {
        if col >= self.width || row >= self.len() {
            return None;
        }
        Some(self.cell(row, col))
    }

    /// The values of column `col`, top to bottom (empty when `col` is out of range).
    pub fn column_values(&self, col: usize) -> impl Iterator<Item = &str> + '_ {
        let rows = if col < self.width { self.len() } else { 0 };
        (0..rows).map(move |r| self.cell(r, col))
    }

    /// The values of row `row`, left to right (empty when `row` is out of range).
    pub fn row(&self, row: usize) -> impl Iterator<Item = &str> + '_ {
        let cols = if row < self.len() { self.width } else { 0 };
        (0..cols).map(move |c| self.cell(row, c))
    }

    /// Appends a row.
    ///
    /// # Panics
    /// If the number of values differs from the number of columns, or the table's text would
    /// exceed 4 GiB.
    pub fn push_row<I, S>(&mut self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let before = self.spans.len();
        for v in values {
            let v = v.as_ref();
            let start = u32::try_from(self.text.len()).expect("STAR table text over 4 GiB");
            let len = u32::try_from(v.len()).expect("STAR value over 4 GiB");
            self.text.push_str(v);
            self.spans.push((start, len));
        }
        let pushed = self.spans.len() - before;
        if pushed != self.width {
            self.spans.truncate(before);
            panic!(
                "StarTable::push_row: {pushed} values for {} columns",
                self.width
            );
        }
    }

    fn cell(&self, row: usize, col: usize) -> &str {
        let (start, len) = self.spans[row * self.width + col];
        &self.text[start as usize..(start + len) as usize]
    }
}

impl PartialEq for StarTable {
    /// Tables are equal when their labels and values are, however the text is stored.
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels
            && self.width == other.width
            && self.spans.len() == other.spans.len()
            && (0..self.len()).all(|r| self.row(r).eq(other.row(r)))
    }
}

/// Reads and parses a STAR file.
pub fn read_star(path: &Path) -> Result<StarFile> {
    let bytes = mcg_fsio::budget::read_whole(path)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        FormatError::invalid(
            path,
            "text",
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    parse_star(&text, path)
}

/// Parses STAR text; `path` only names the source in errors.
pub fn parse_star(text: &str, path: &Path) -> Result<StarFile> {
    Parser::new(text, path).run()
}

/// Writes `file` atomically: to a temporary file in the same folder, then renamed over `path`.
/// Table columns are aligned; values holding whitespace are quoted.
pub fn write_star(path: &Path, file: &StarFile) -> Result<()> {
    let text = render_star(file, None, path)?;
    write_atomically(path, text.as_bytes())
}

/// Options of the particle readers ([`read_particles`], [`crate::cs::read_cs`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StarOptions {
    /// Folder holding the image stacks, when they are not where the metadata file says
    /// (relative to its folder). A stack path is looked up as written under this folder, then
    /// by its file name alone (as cryoDRGN's `--datadir` does).
    pub data_dir: Option<PathBuf>,
    /// Pixel size in Å for files that give none (no `_rlnImagePixelSize`, no detector pixel
    /// size and magnification); tried before the stacks' MRC headers.
    pub apix: Option<f64>,
}

/// Reads a RELION 3.0, 3.1 or 5 particle STAR file (see the module documentation for the
/// labels used, the defaults and the pixel-size search).
pub fn read_particles(path: &Path, opts: &StarOptions) -> Result<ParticleSet> {
    let file = read_star(path)?;
    let set = particles_from_star(&file, path, opts)?;
    set.validate(path)?;
    Ok(set)
}

/// Writes `set` as a RELION 3.1 particle file (`# version 30001`, `data_optics` then
/// `data_particles`), atomically.
///
/// Image names are `000001@stack.mrcs` with the stack path relative to the folder of `path`;
/// shifts are written in Å; poses, classes and image names when the particles have them;
/// every CTF field; then the extra columns. Fails (and writes nothing) when particles disagree
/// on which optional fields they carry, when a particle's voltage, Cs or amplitude contrast
/// differ from its optics group's, when a number is not finite, or when an extra column
/// repeats a written label.
pub fn write_particles(path: &Path, set: &ParticleSet) -> Result<()> {
    write_particles_with_notes(path, set, &[])
}

/// [`write_particles`] with comment lines at the top of the file (`# ` is prepended to each
/// note), e.g. to declare the meaning of extra columns. Readers skip them.
pub fn write_particles_with_notes(path: &Path, set: &ParticleSet, notes: &[String]) -> Result<()> {
    let file = particles_to_star(set, path)?;
    let mut text = String::new();
    for note in notes {
        if note.contains(['\n', '\r']) {
            return Err(FormatError::invalid(
                path,
                "header comment",
                "a note must be a single line",
            ));
        }
        text.push_str("# ");
        text.push_str(note);
        text.push('\n');
    }
    text.push_str(&render_star(&file, Some("# version 30001"), path)?);
    write_atomically(path, text.as_bytes())
}
