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

// ---------------------------------------------------------------------------------------------
// Parser.

/// A token of a line: byte range of its value in the whole text, and whether it was quoted.
#[derive(Debug, Clone, Copy)]
struct Token {
    start: usize,
    end: usize,
    quoted: bool,
}

enum State {
    /// Before the first `data_`.
    Outside,
    /// Inside a block, outside any table.
    Block,
    /// After `loop_`, reading labels.
    Header,
    /// Reading table rows.
    Body,
}

struct Parser<'a> {
    text: &'a str,
    path: &'a Path,
    blocks: Vec<StarBlock>,
    state: State,
    line_no: usize,
    labels: Vec<String>,
    spans: Vec<(u32, u32)>,
    body_start: usize,
    body_end: usize,
    tokens: Vec<Token>,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        Self {
            text,
            path,
            blocks: Vec::new(),
            state: State::Outside,
            line_no: 0,
            labels: Vec::new(),
            spans: Vec::new(),
            body_start: 0,
            body_end: 0,
            tokens: Vec::new(),
        }
    }

    fn run(mut self) -> Result<StarFile> {
        let text = self.text;
        let mut pos = 0;
        while pos < text.len() {
            let end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
            self.line_no += 1;
            self.line(pos, end)?;
            pos = end + 1;
        }
        self.finish_table()?;
        Ok(StarFile {
            blocks: self.blocks,
        })
    }

    fn line(&mut self, start: usize, end: usize) -> Result<()> {
        let mut tokens = std::mem::take(&mut self.tokens);
        tokens.clear();
        let result = tokenize(self.text.as_bytes(), start, end, &mut tokens)
            .map_err(|problem| self.error(problem))
            .and_then(|()| self.handle(&tokens));
        self.tokens = tokens;
        result
    }

    fn handle(&mut self, tokens: &[Token]) -> Result<()> {
        let Some(&first) = tokens.first() else {
            return Ok(()); // Blank or comment line.
        };
        let word = &self.text[first.start..first.end];
        let keyword = if first.quoted {
            None
        } else if starts_with_ignore_case(word, "data_") {
            Some(Keyword::Data)
        } else if word.eq_ignore_ascii_case("loop_") {
            Some(Keyword::Loop)
        } else if word.starts_with('_') {
            Some(Keyword::Label)
        } else if ["save_", "global_", "stop_"]
            .iter()
            .any(|k| starts_with_ignore_case(word, k))
        {
            return Err(self.error(format!("unsupported STAR construct `{word}`")));
        } else {
            None
        };

        // A table body ends at the next keyword.
        if matches!(self.state, State::Body) && keyword.is_some() {
            self.finish_table()?;
            self.state = State::Block;
        }

        match (&self.state, keyword) {
            (_, Some(Keyword::Data)) => {
                if matches!(self.state, State::Header) {
                    self.finish_table()?;
                }
                self.expect_alone(tokens, "block name")?;
                self.blocks.push(StarBlock::new(&word[5..]));
                self.state = State::Block;
            }
            (State::Outside, _) => {
                return Err(self.error(format!("expected `data_` before `{word}`")));
            }
            (State::Block, Some(Keyword::Loop)) => {
                self.expect_alone(tokens, "loop_")?;
                if self.current_block().table.is_some() {
                    return Err(self.error(
                        "a second `loop_` in one block (one table per block is supported)",
                    ));
                }
                self.state = State::Header;
            }
            (State::Block, Some(Keyword::Label)) => {
                if self.current_block().pairs.iter().any(|(l, _)| l == word) {
                    return Err(self.error(format!("`{word}` appears twice in one block")));
                }
                if tokens.len() != 2 {
                    return Err(self.error(format!(
                        "`{word}` outside a table needs exactly one value, found {}",
                        tokens.len() - 1
                    )));
                }
                let value = &self.text[tokens[1].start..tokens[1].end];
                let pair = (word.to_owned(), value.to_owned());
                self.current_block().pairs.push(pair);
            }
            (State::Block, _) => {
                return Err(self.error(format!(
                    "unexpected `{word}`: expected `loop_`, `_label value` or `data_`"
                )));
            }
            (State::Header, Some(Keyword::Label)) => {
                self.expect_alone(tokens, "label")?;
                // A repeated column would leave which copy counts to chance.
                if let Some(k) = self.labels.iter().position(|l| l == word) {
                    return Err(self.error(format!(
                        "column `{word}` appears twice in one table (columns {} and {})",
                        k + 1,
                        self.labels.len() + 1
                    )));
                }
                self.labels.push(word.to_owned());
            }
            (State::Header, Some(Keyword::Loop)) => {
                return Err(self.error("`loop_` inside a table header"));
            }
            (State::Header | State::Body, _) => {
                if matches!(self.state, State::Header) {
                    if self.labels.is_empty() {
                        return Err(self.error(format!("`loop_` without labels before `{word}`")));
                    }
                    self.state = State::Body;
                    self.body_start = first.start;
                    self.spans.clear();
                }
                self.row(tokens)?;
            }
        }
        Ok(())
    }

    fn row(&mut self, tokens: &[Token]) -> Result<()> {
        if tokens.len() != self.labels.len() {
            let row = self.spans.len() / self.labels.len() + 1;
            return Err(self.error(format!(
                "table row {row} has {} values, expected {} (one per label)",
                tokens.len(),
                self.labels.len()
            )));
        }
        for t in tokens {
            let start = t.start - self.body_start;
            let (Ok(s), Ok(l)) = (u32::try_from(start), u32::try_from(t.end - t.start)) else {
                return Err(self.error("table text over 4 GiB"));
            };
            self.spans.push((s, l));
        }
        // The last token ends at or after any closing quote, so the body text covers them all.
        self.body_end = tokens.last().map_or(self.body_end, |t| t.end);
        Ok(())
    }

    /// Closes an open table (header or body) into the current block.
    fn finish_table(&mut self) -> Result<()> {
        match self.state {
            State::Header | State::Body => {}
            State::Outside | State::Block => return Ok(()),
        }
        if self.labels.is_empty() {
            return Err(self.error("`loop_` without labels"));
        }
        let labels = std::mem::take(&mut self.labels);
        let mut table = StarTable::new(labels);
        if matches!(self.state, State::Body) {
            table.text = self.text[self.body_start..self.body_end].to_owned();
            table.spans = std::mem::take(&mut self.spans);
        }
        self.current_block().table = Some(table);
        self.state = State::Block;
        Ok(())
    }

    fn current_block(&mut self) -> &mut StarBlock {
        // Every state but `Outside` has pushed a block.
        if self.blocks.is_empty() {
            self.blocks.push(StarBlock::default());
        }
        let last = self.blocks.len() - 1;
        &mut self.blocks[last]
    }

    fn expect_alone(&self, tokens: &[Token], what: &str) -> Result<()> {
        if let Some(extra) = tokens.get(1) {
            return Err(self.error(format!(
                "unexpected `{}` after the {what}",
                &self.text[extra.start..extra.end]
            )));
        }
        Ok(())
    }

    fn error(&self, problem: impl Into<String>) -> FormatError {
        let field = match self.blocks.last() {
            Some(b) => format!("data_{}, line {}", b.name, self.line_no),
            None => format!("line {}", self.line_no),
        };
        FormatError::invalid(self.path, field, problem)
    }
}

#[derive(Clone, Copy)]
enum Keyword {
    Data,
    Loop,
    Label,
}

/// Splits `bytes[start..end]` (one line) into tokens, stopping at a `#` comment.
fn tokenize(
    bytes: &[u8],
    start: usize,
    end: usize,
    out: &mut Vec<Token>,
) -> std::result::Result<(), String> {
    let mut i = start;
    loop {
        while i < end && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= end || bytes[i] == b'#' {
            return Ok(());
        }
        let q = bytes[i];
        if q == b'\'' || q == b'"' {
            // A quote closes only when followed by whitespace or the end of the line.
            let mut j = i + 1;
            loop {
                if j >= end {
                    return Err(format!(
                        "unterminated {} quote",
                        if q == b'"' { "double" } else { "single" }
                    ));
                }
                if bytes[j] == q && (j + 1 >= end || bytes[j + 1].is_ascii_whitespace()) {
                    break;
                }
                j += 1;
            }
            out.push(Token {
                start: i + 1,
                end: j,
                quoted: true,
            });
            i = j + 1;
        } else {
            let s = i;
            while i < end && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            out.push(Token {
                start: s,
                end: i,
                quoted: false,
            });
        }
    }
}

fn starts_with_ignore_case(word: &str, prefix: &str) -> bool {
    word.len() >= prefix.len()
        && word.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Writer.

fn render_star(file: &StarFile, header: Option<&str>, path: &Path) -> Result<String> {
    let mut out = String::new();
    for block in &file.blocks {
        if block
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(FormatError::invalid(
                path,
                format!("data_{}", block.name),
                "a block name cannot hold whitespace",
            ));
        }
        let field = |what: &str| format!("data_{}, {what}", block.name);
        if let Some(h) = header {
            out.push('\n');
            out.push_str(h);
            out.push('\n');
        }
        let _ = write!(out, "\ndata_{}\n\n", block.name);
        if !block.pairs.is_empty() {
            let w = block.pairs.iter().map(|(l, _)| l.chars().count()).max();
            for (label, value) in &block.pairs {
                check_label(label).map_err(|p| FormatError::invalid(path, field(label), p))?;
                let v = quote(value).map_err(|p| FormatError::invalid(path, field(label), p))?;
                let _ = writeln!(out, "{label:<w$} {v}", w = w.unwrap_or(0));
            }
            out.push('\n');
        }
        let Some(table) = &block.table else { continue };
        if table.labels.len() != table.width {
            return Err(FormatError::invalid(
                path,
                field("loop_"),
                format!(
                    "{} labels for a table of {} columns",
                    table.labels.len(),
                    table.width
                ),
            ));
        }
        if table.width == 0 {
            return Err(FormatError::invalid(
                path,
                field("loop_"),
                "a table without columns",
            ));
        }
        out.push_str("loop_\n");
        for (i, label) in table.labels[..table.width].iter().enumerate() {
            check_label(label).map_err(|p| FormatError::invalid(path, field(label), p))?;
            let _ = writeln!(out, "{label} #{}", i + 1);
        }
        // Measure the quoted columns, then write them right-aligned as RELION does.
        let cell_error = |r: usize, c: usize, p: String| {
            FormatError::invalid(
                path,
                field(&format!("{}, row {}", table.labels[c], r + 1)),
                p,
            )
        };
        let mut widths = vec![0usize; table.width];
        for r in 0..table.len() {
            for (c, v) in table.row(r).enumerate() {
                let q = quote(v).map_err(|p| cell_error(r, c, p))?;
                widths[c] = widths[c].max(q.chars().count());
            }
        }
        out.reserve(table.len() * (widths.iter().sum::<usize>() + table.width));
        for r in 0..table.len() {
            for (c, v) in table.row(r).enumerate() {
                let q = quote(v).map_err(|p| cell_error(r, c, p))?;
                let pad = widths[c].saturating_sub(q.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(&q);
                out.push(' ');
            }
            out.pop();
            out.push('\n');
        }
        out.push('\n');
    }
    Ok(out)
}

fn check_label(label: &str) -> std::result::Result<(), String> {
    if label.len() < 2
        || !label.starts_with('_')
        || label.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "label {label:?} must start with `_` and hold no whitespace"
        ));
    }
    Ok(())
}

/// The value as it must be written: bare, or quoted when it would otherwise read back
/// differently.
fn quote(v: &str) -> std::result::Result<std::borrow::Cow<'_, str>, String> {
    if v.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("value {v:?} holds a control character"));
    }
    let needs = v.is_empty()
        || v.chars().any(char::is_whitespace)
        || v.starts_with(['\'', '"', '#', '_'])
        || ["data_", "loop_", "save_", "global_", "stop_"]
            .iter()
            .any(|k| starts_with_ignore_case(v, k));
    if !needs {
        return Ok(v.into());
    }
    for q in ['"', '\''] {
        // With CIF quoting, a quote inside the value is harmless unless whitespace follows it.
        let closes_early = v
            .char_indices()
            .any(|(i, c)| c == q && v[i + 1..].starts_with(char::is_whitespace));
        if !closes_early {
            return Ok(format!("{q}{v}{q}").into());
        }
    }
    Err(format!("value {v:?} cannot be quoted"))
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(mcg_fsio::write_atomic(path, bytes)?)
}

// ---------------------------------------------------------------------------------------------
// Particle layer: reading.

const IMAGE_NAME: &str = "_rlnImageName";
const OPTICS_GROUP: &str = "_rlnOpticsGroup";
const OPTICS_GROUP_NAME: &str = "_rlnOpticsGroupName";
const VOLTAGE: &str = "_rlnVoltage";
const CS: &str = "_rlnSphericalAberration";
const Q0: &str = "_rlnAmplitudeContrast";
const IMAGE_PIXEL_SIZE: &str = "_rlnImagePixelSize";
const DETECTOR_PIXEL_SIZE: &str = "_rlnDetectorPixelSize";
const MAGNIFICATION: &str = "_rlnMagnification";
const IMAGE_SIZE: &str = "_rlnImageSize";
const DEFOCUS_U: &str = "_rlnDefocusU";
const DEFOCUS_V: &str = "_rlnDefocusV";
const DEFOCUS_ANGLE: &str = "_rlnDefocusAngle";
const PHASE_SHIFT: &str = "_rlnPhaseShift";
const BFACTOR: &str = "_rlnCtfBfactor";
const SCALE: &str = "_rlnCtfScalefactor";
const ORIGIN_X_ANGST: &str = "_rlnOriginXAngst";
const ORIGIN_Y_ANGST: &str = "_rlnOriginYAngst";
const ORIGIN_X: &str = "_rlnOriginX";
const ORIGIN_Y: &str = "_rlnOriginY";
const ANGLE_ROT: &str = "_rlnAngleRot";
const ANGLE_TILT: &str = "_rlnAngleTilt";
const ANGLE_PSI: &str = "_rlnAnglePsi";
const CLASS: &str = "_rlnClassNumber";

/// Maps a parsed STAR file to particles; `path` is the file's location (for relative image
/// paths and errors).
pub(crate) fn particles_from_star(
    file: &StarFile,
    path: &Path,
    opts: &StarOptions,
) -> Result<ParticleSet> {
    let optics_block = file
        .blocks
        .iter()
        .find(|b| b.name == "optics" && b.table.is_some());
    let (block, table) = particle_table(file, path)?;
    let mut cols = Columns::new(table, path, &block.name);
    let n = table.len();

    let base_dir = match &opts.data_dir {
        Some(d) => absolute(d),
        None => absolute(path.parent().unwrap_or(Path::new(""))),
    };
    let images = read_images(&mut cols, opts.data_dir.as_deref())?;

    // CTF columns common to both layouts.
    let defocus_u = cols.required(DEFOCUS_U)?;
    let defocus_v = cols.num(DEFOCUS_V)?.unwrap_or_else(|| defocus_u.clone());
    let defocus_angle = cols.num_or(DEFOCUS_ANGLE, 0.0)?;
    let phase_shift = cols.num_or(PHASE_SHIFT, 0.0)?;
    let bfactor = cols.num_or(BFACTOR, 0.0)?;
    let scale = cols.num_or(SCALE, 1.0)?;

    // The first stack of each group, for headers that give a missing pixel or image size.
    let first_stack = |group_of: &dyn Fn(usize) -> bool| {
        images.as_ref().and_then(|v| {
            (0..n)
                .find(|&i| group_of(i))
                .map(|i| resolve_path(&base_dir, &v[i].path))
        })
    };

    let (mut optics, group_of) = match optics_block {
        Some(ob) => {
            let ot = ob.table.as_ref().expect("selected for having a table");
            let group_ids = cols.int(OPTICS_GROUP)?;
            read_optics_31(
                ot,
                path,
                &ob.name,
                &block.name,
                group_ids,
                n,
                opts,
                &|g: usize, groups: &[usize]| first_stack(&|i| groups[i] == g),
            )?
        }
        None => {
            let first = first_stack(&|_| true);
            group_optics_30(&mut cols, n, opts, first)?
        }
    };
    for (g, group) in optics.iter_mut().enumerate() {
        if group.image_size.is_none() {
            group.image_size = first_stack(&|i| group_of[i] == g).and_then(|s| stack_edge(&s));
        }
    }

    // Shifts in Å.
    let shift = match (cols.num(ORIGIN_X_ANGST)?, cols.num(ORIGIN_Y_ANGST)?) {
        (Some(x), Some(y)) => Some((x, y, false)),
        (None, None) => match (cols.num(ORIGIN_X)?, cols.num(ORIGIN_Y)?) {
            (Some(x), Some(y)) => Some((x, y, true)),
            (None, None) => None,
            (Some(_), None) => return Err(cols.missing(ORIGIN_Y, "it is paired with _rlnOriginX")),
            (None, Some(_)) => return Err(cols.missing(ORIGIN_X, "it is paired with _rlnOriginY")),
        },
        (Some(_), None) => {
            return Err(cols.missing(ORIGIN_Y_ANGST, "it is paired with _rlnOriginXAngst"));
        }
        (None, Some(_)) => {
            return Err(cols.missing(ORIGIN_X_ANGST, "it is paired with _rlnOriginYAngst"));
        }
    };

    let has_all_angles = [ANGLE_ROT, ANGLE_TILT, ANGLE_PSI]
        .iter()
        .all(|l| table.column(l).is_some());
    let angles = if has_all_angles {
        Some((
            cols.required(ANGLE_ROT)?,
            cols.required(ANGLE_TILT)?,
            cols.required(ANGLE_PSI)?,
        ))
    } else {
        None
    };
    let class = match cols.int(CLASS)? {
        Some(c) => Some(
            c.iter()
                .enumerate()
                .map(|(i, &v)| cols.to_u32(CLASS, i, v))
                .collect::<Result<Vec<u32>>>()?,
        ),
        None => None,
    };

    let mut images = images.map(Vec::into_iter);
    let mut particles = Vec::with_capacity(n);
    for i in 0..n {
        let g = &optics[group_of[i]];
        let shift = match &shift {
            Some((x, y, false)) => Shift { x: x[i], y: y[i] },
            Some((x, y, true)) => Shift {
                x: x[i] * g.pixel_size,
                y: y[i] * g.pixel_size,
            },
            None => Shift::default(),
        };
        particles.push(Particle {
            image: images.as_mut().and_then(Iterator::next),
            optics_group: group_of[i],
            pose: angles.as_ref().map(|(r, t, p)| Pose::new(r[i], t[i], p[i])),
            shift,
            ctf: CtfParams {
                defocus_u: defocus_u[i],
                defocus_v: defocus_v[i],
                defocus_angle: defocus_angle[i],
                voltage: g.voltage,
                cs: g.cs,
                amplitude_contrast: g.amplitude_contrast,
                phase_shift: phase_shift[i],
                bfactor: bfactor[i],
                scale: scale[i],
            },
            class: class.as_ref().map(|c| c[i]),
        });
    }

    Ok(ParticleSet {
        optics,
        particles,
        extra: cols.extra(),
        base_dir,
    })
}

/// Chooses the particle table: block `particles`, else the only other block with a table, else
/// the first one that looks like particles.
fn particle_table<'f>(file: &'f StarFile, path: &Path) -> Result<(&'f StarBlock, &'f StarTable)> {
    let with_table = |b: &'f StarBlock| b.table.as_ref().map(|t| (b, t));
    if let Some(found) = file
        .blocks
        .iter()
        .filter(|b| b.name == "particles")
        .find_map(with_table)
    {
        return Ok(found);
    }
    let candidates: Vec<_> = file
        .blocks
        .iter()
        .filter(|b| b.name != "optics")
        .filter_map(with_table)
        .collect();
    match candidates.as_slice() {
        [one] => Ok(*one),
        [] => Err(FormatError::invalid(
            path,
            "data_particles",
            format!(
                "no particle table: expected a `data_particles` block or a single table, \
                 found blocks [{}]",
                block_names(file)
            ),
        )),
        many => many
            .iter()
            .find(|(_, t)| t.column(IMAGE_NAME).is_some() || t.column(DEFOCUS_U).is_some())
            .copied()
            .ok_or_else(|| {
                FormatError::invalid(
                    path,
                    "data_particles",
                    format!(
                        "several tables and none with {IMAGE_NAME} or {DEFOCUS_U}: blocks [{}]",
                        block_names(file)
                    ),
                )
            }),
    }
}

fn block_names(file: &StarFile) -> String {
    file.blocks
        .iter()
        .map(|b| format!("data_{}", b.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `_rlnImageName` into image references (`None` when the column is absent).
fn read_images(cols: &mut Columns<'_>, data_dir: Option<&Path>) -> Result<Option<Vec<ImageRef>>> {
    let Some(c) = cols.take(IMAGE_NAME) else {
        return Ok(None);
    };
    let mut resolved: HashMap<&str, PathBuf> = HashMap::new();
    let mut out = Vec::with_capacity(cols.table.len());
    for (row, name) in cols.table.column_values(c).enumerate() {
        let (index, file) = match name.split_once('@') {
            Some((num, file)) => {
                let index = num
                    .parse::<usize>()
                    .ok()
                    .filter(|&k| k >= 1 && num.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        cols.bad_value(
                            IMAGE_NAME,
                            row,
                            name,
                            "an image number ≥ 1 before `@` (NNNNNN@stack.mrcs)",
                        )
                    })?;
                (index - 1, file)
            }
            None => (0, name),
        };
        if file.is_empty() {
            return Err(cols.bad_value(IMAGE_NAME, row, name, "a stack path after `@`"));
        }
        let path = match resolved.entry(file) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => e.insert(stack_path(file, data_dir)).clone(),
        };
        out.push(ImageRef { path, index });
    }
    Ok(Some(out))
}

/// The path to record for a stack written as `file`: as written, or its file name alone when
/// only that exists under the data folder.
pub(crate) fn stack_path(file: &str, data_dir: Option<&Path>) -> PathBuf {
    let written = PathBuf::from(file);
    if let Some(dir) = data_dir
        && !resolve_path(dir, &written).exists()
        && let Some(name) = written.file_name()
        && dir.join(name).exists()
    {
        return PathBuf::from(name);
    }
    written
}

type OpticsAndGroups = (Vec<OpticsGroup>, Vec<usize>);

/// What makes a RELION 3.0 particle's optics group: the bits of voltage, Cs, amplitude
/// contrast and pixel size, the image size, and the `_rlnOpticsGroup` text if any.
type OpticsKey<'a> = (u64, u64, u64, u64, Option<u32>, Option<&'a str>);

/// RELION ≥ 3.1: the optics table, and each particle's index into it.
fn read_optics_31(
    ot: &StarTable,
    path: &Path,
    block: &str,
    particle_block: &str,
    particle_group_ids: Option<Vec<f64>>,
    n: usize,
    opts: &StarOptions,
    first_stack: &dyn Fn(usize, &[usize]) -> Option<PathBuf>,
) -> Result<OpticsAndGroups> {
    let mut oc = Columns::new(ot, path, block);
    let m = ot.len();
    if m == 0 {
        return Err(FormatError::invalid(
            path,
            format!("data_{block}"),
            "the optics table has no row",
        ));
    }
    let ids = oc
        .int(OPTICS_GROUP)?
        .ok_or_else(|| oc.missing(OPTICS_GROUP, "every optics group needs its number"))?;
    let names = oc.take(OPTICS_GROUP_NAME);
    let voltage = oc.required(VOLTAGE)?;
    let cs = oc.required(CS)?;
    let q0 = oc.num_or(Q0, 0.0)?;
    let pixel = pixel_sizes(&mut oc)?;
    let size = oc.int(IMAGE_SIZE)?;

    let mut optics = Vec::with_capacity(m);
    let mut index_of = HashMap::new();
    for r in 0..m {
        let id = oc.to_u32(OPTICS_GROUP, r, ids[r])?;
        if index_of.insert(id, r).is_some() {
            let text = ot.column(OPTICS_GROUP).map_or("", |c| ot.cell(r, c));
            return Err(oc.bad_value(OPTICS_GROUP, r, text, "a number used once"));
        }
        optics.push(OpticsGroup {
            id,
            name: names.map_or_else(|| format!("opticsGroup{id}"), |c| ot.cell(r, c).to_owned()),
            pixel_size: pixel.as_ref().map_or(f64::NAN, |p| p[r]),
            image_size: match &size {
                Some(s) => Some(oc.to_u32(IMAGE_SIZE, r, s[r])? as usize),
                None => None,
            },
            voltage: voltage[r],
            cs: cs[r],
            amplitude_contrast: q0[r],
            extra: Vec::new(),
        });
    }
    let extra = oc.extra();
    for (r, g) in optics.iter_mut().enumerate() {
        g.extra = extra
            .iter()
            .map(|(label, values)| (label.clone(), values[r].clone()))
            .collect();
    }

    let groups = match particle_group_ids {
        Some(ids) => {
            let mut groups = Vec::with_capacity(n);
            for (i, &v) in ids.iter().enumerate() {
                let id = u32::try_from(v as i64).ok().filter(|_| v.fract() == 0.0);
                match id.and_then(|id| index_of.get(&id)) {
                    Some(&g) => groups.push(g),
                    None => {
                        return Err(FormatError::invalid(
                            path,
                            format!("data_{particle_block}, {OPTICS_GROUP}, row {}", i + 1),
                            format!(
                                "particle refers to optics group {v}, which the optics table \
                                 does not define"
                            ),
                        ));
                    }
                }
            }
            groups
        }
        None if m == 1 => vec![0; n],
        None => {
            return Err(FormatError::invalid(
                path,
                format!("data_{particle_block}, {OPTICS_GROUP}"),
                format!(
                    "the particle table has no {OPTICS_GROUP} column but there are {m} \
                     optics groups"
                ),
            ));
        }
    };

    if pixel.is_none() {
        for (g, group) in optics.iter_mut().enumerate() {
            group.pixel_size = fallback_pixel_size(
                path,
                &format!("data_{block}"),
                PIXEL_SIZE_LABELS,
                opts,
                first_stack(g, &groups),
            )?;
        }
    }
    Ok((optics, groups))
}

/// What a STAR file should give as the pixel size, for errors.
const PIXEL_SIZE_LABELS: &str =
    "_rlnImagePixelSize, or _rlnDetectorPixelSize with _rlnMagnification";

/// RELION 3.0: optics values per particle, grouped by their distinct values.
fn group_optics_30(
    cols: &mut Columns<'_>,
    n: usize,
    opts: &StarOptions,
    first_stack: Option<PathBuf>,
) -> Result<OpticsAndGroups> {
    let voltage = cols.required(VOLTAGE)?;
    let cs = cols.required(CS)?;
    let q0 = cols.num_or(Q0, 0.0)?;
    let pixel = match pixel_sizes(cols)? {
        Some(p) => p,
        None => {
            let p = fallback_pixel_size(
                cols.path,
                &format!("data_{}", cols.block),
                PIXEL_SIZE_LABELS,
                opts,
                first_stack,
            )?;
            vec![p; n]
        }
    };
    let size = cols.int(IMAGE_SIZE)?;
    let label = cols.take(OPTICS_GROUP);
    let table = cols.table;

    let mut optics: Vec<OpticsGroup> = Vec::new();
    let mut index_of: HashMap<OpticsKey<'_>, usize> = HashMap::new();
    let mut groups = Vec::with_capacity(n);
    for i in 0..n {
        let image_size = match &size {
            Some(s) => Some(cols.to_u32(IMAGE_SIZE, i, s[i])?),
            None => None,
        };
        let key = (
            voltage[i].to_bits(),
            cs[i].to_bits(),
            q0[i].to_bits(),
            pixel[i].to_bits(),
            image_size,
            label.map(|c| table.cell(i, c)),
        );
        let g = *index_of.entry(key).or_insert_with(|| {
            let id = optics.len() as u32 + 1;
            optics.push(OpticsGroup::numbered(
                id,
                pixel[i],
                image_size.map(|s| s as usize),
                voltage[i],
                cs[i],
                q0[i],
            ));
            optics.len() - 1
        });
        groups.push(g);
    }
    Ok((optics, groups))
}

/// Pixel sizes from `_rlnImagePixelSize`, or `_rlnDetectorPixelSize`·10⁴/`_rlnMagnification`.
fn pixel_sizes(cols: &mut Columns<'_>) -> Result<Option<Vec<f64>>> {
    let direct = cols.num(IMAGE_PIXEL_SIZE)?;
    let detector = cols.num(DETECTOR_PIXEL_SIZE)?;
    let mag = cols.num(MAGNIFICATION)?;
    let p = match (direct, detector, mag) {
        (Some(p), _, _) => p,
        (None, Some(d), Some(m)) => d.iter().zip(&m).map(|(d, m)| d * 1e4 / m).collect(),
        _ => return Ok(None),
    };
    for (r, &v) in p.iter().enumerate() {
        if !(v.is_finite() && v > 0.0) {
            return Err(FormatError::invalid(
                cols.path,
                format!("data_{}, {IMAGE_PIXEL_SIZE}, row {}", cols.block, r + 1),
                format!("pixel size {v} Å: expected a positive number"),
            ));
        }
    }
    Ok(Some(p))
}

/// The pixel size of a file that gives none: the option, else the first stack's MRC header.
///
/// `field` and `expected` name, for the error, where the file should have given it.
pub(crate) fn fallback_pixel_size(
    path: &Path,
    field: &str,
    expected: &str,
    opts: &StarOptions,
    first_stack: Option<PathBuf>,
) -> Result<f64> {
    if let Some(a) = opts.apix {
        if a.is_finite() && a > 0.0 {
            return Ok(a);
        }
        return Err(FormatError::invalid(
            path,
            "apix",
            format!("pixel size {a} Å given: expected a positive number"),
        ));
    }
    let why = match &first_stack {
        None => "and no image names a stack whose header could give one".to_owned(),
        Some(stack) => match stack_voxel_size(stack) {
            Ok(Some(a)) if a.is_finite() && a > 0.0 => return Ok(a),
            Ok(_) => format!("and the header of {} gives none", stack.display()),
            Err(e) => format!("and the header of the first stack could not be read ({e})"),
        },
    };
    Err(FormatError::invalid(
        path,
        field,
        format!("no pixel size: expected {expected}, {why}\nhint: pass the pixel size with --apix"),
    ))
}

/// The voxel size an MRC stack's header records, if any.
fn stack_voxel_size(stack: &Path) -> Result<Option<f64>> {
    Ok(crate::mrc::read_header(stack)?.voxel_size())
}

/// The image edge (NX) of an existing, readable MRC stack; `None` otherwise, since the image
/// size is optional metadata and a metadata-only file has no stacks beside it.
pub(crate) fn stack_edge(stack: &Path) -> Option<usize> {
    if !stack.is_file() {
        return None;
    }
    let header = crate::mrc::read_header(stack).ok()?;
    usize::try_from(header.nx).ok().filter(|&nx| nx > 0)
}

/// Column access that records which columns were used, so the rest become extras.
struct Columns<'t> {
    table: &'t StarTable,
    path: &'t Path,
    block: &'t str,
    used: Vec<bool>,
}

impl<'t> Columns<'t> {
    fn new(table: &'t StarTable, path: &'t Path, block: &'t str) -> Self {
        Self {
            table,
            path,
            block,
            used: vec![false; table.width()],
        }
    }

    /// The column `label`, marked as used.
    fn take(&mut self, label: &str) -> Option<usize> {
        let c = self.table.column(label)?;
        self.used[c] = true;
        Some(c)
    }

    /// Finite numbers of column `label`, or `None` when it is absent.
    fn num(&mut self, label: &str) -> Result<Option<Vec<f64>>> {
        let Some(c) = self.take(label) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(self.table.len());
        for (r, text) in self.table.column_values(c).enumerate() {
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => out.push(v),
                _ => return Err(self.bad_value(label, r, text, "a finite number")),
            }
        }
        Ok(Some(out))
    }

    fn num_or(&mut self, label: &str, default: f64) -> Result<Vec<f64>> {
        Ok(self
            .num(label)?
            .unwrap_or_else(|| vec![default; self.table.len()]))
    }

    fn required(&mut self, label: &str) -> Result<Vec<f64>> {
        self.num(label)?
            .ok_or_else(|| self.missing(label, "it is required"))
    }

    /// Integers of column `label` (as written: `3`, or `3.000000`), as f64.
    fn int(&mut self, label: &str) -> Result<Option<Vec<f64>>> {
        let Some(values) = self.num(label)? else {
            return Ok(None);
        };
        let c = self.table.column(label).expect("just read");
        for (r, v) in values.iter().enumerate() {
            if v.fract() != 0.0 {
                return Err(self.bad_value(label, r, self.table.cell(r, c), "an integer"));
            }
        }
        Ok(Some(values))
    }

    fn to_u32(&self, label: &str, row: usize, v: f64) -> Result<u32> {
        if v >= 0.0 && v <= u32::MAX as f64 && v.fract() == 0.0 {
            return Ok(v as u32);
        }
        let c = self.table.column(label);
        let text = c.map_or(String::new(), |c| self.table.cell(row, c).to_owned());
        Err(self.bad_value(label, row, &text, "a non-negative integer"))
    }

    fn missing(&self, label: &str, why: &str) -> FormatError {
        FormatError::invalid(
            self.path,
            format!("data_{}, {label}", self.block),
            format!("column {label} is missing: {why}"),
        )
    }

    fn bad_value(&self, label: &str, row: usize, text: &str, expected: &str) -> FormatError {
        FormatError::invalid(
            self.path,
            format!("data_{}, {label}, row {}", self.block, row + 1),
            format!("found {text:?}, expected {expected}"),
        )
    }

    /// The unused columns as text, in file order.
    fn extra(&self) -> Vec<(String, Vec<String>)> {
        (0..self.table.width())
            .filter(|&c| !self.used[c])
            .map(|c| {
                (
                    self.table.labels[c].clone(),
                    self.table.column_values(c).map(str::to_owned).collect(),
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Particle layer: writing.

fn particles_to_star(set: &ParticleSet, path: &Path) -> Result<StarFile> {
    let invalid = |field: String, problem: String| FormatError::invalid(path, field, problem);
    let n = set.len();

    // Optics.
    let mut ids = HashMap::new();
    for (g, o) in set.optics.iter().enumerate() {
        if ids.insert(o.id, g).is_some() {
            return Err(invalid(
                format!("optics group {}", o.id),
                "two optics groups share this number".into(),
            ));
        }
    }
    let with_size = set.optics.iter().filter(|o| o.image_size.is_some()).count();
    if with_size != 0 && with_size != set.optics.len() {
        return Err(invalid(
            IMAGE_SIZE.into(),
            "some optics groups have an image size and others not".into(),
        ));
    }
    let mut optics_labels: Vec<String> = [
        OPTICS_GROUP,
        OPTICS_GROUP_NAME,
        Q0,
        CS,
        VOLTAGE,
        IMAGE_PIXEL_SIZE,
    ]
    .map(String::from)
    .to_vec();
    if with_size != 0 {
        optics_labels.push(IMAGE_SIZE.into());
    }
    let mapped_optics = optics_labels.len();
    for o in &set.optics {
        for (label, _) in &o.extra {
            if !optics_labels.contains(label) {
                optics_labels.push(label.clone());
            }
        }
    }
    if let Some(dup) = optics_labels[mapped_optics..]
        .iter()
        .find(|l| optics_labels[..mapped_optics].contains(l))
    {
        return Err(invalid(
            dup.clone(),
            "an optics extra column repeats a written label".into(),
        ));
    }
    let mut ot = StarTable::new(optics_labels.clone());
    for o in &set.optics {
        let field = |l: &str| format!("optics group {}, {l}", o.id);
        let mut row = vec![
            o.id.to_string(),
            o.name.clone(),
            fmt_num(o.amplitude_contrast, path, &field(Q0))?,
            fmt_num(o.cs, path, &field(CS))?,
            fmt_num(o.voltage, path, &field(VOLTAGE))?,
            fmt_num(o.pixel_size, path, &field(IMAGE_PIXEL_SIZE))?,
        ];
        if let Some(s) = o.image_size {
            row.push(s.to_string());
        }
        for label in &optics_labels[mapped_optics..] {
            let value = o.extra.iter().find(|(l, _)| l == label).ok_or_else(|| {
                invalid(
                    field(label),
                    "this optics group lacks an extra column that others have".into(),
                )
            })?;
            row.push(value.1.clone());
        }
        ot.push_row(row);
    }

    // Which optional particle fields are written: all particles or none must have them.
    let all_or_none = |label: &str, count: usize| -> Result<bool> {
        if count != 0 && count != n {
            return Err(invalid(
                label.into(),
                format!("{count} of {n} particles have this field; all or none must"),
            ));
        }
        Ok(count == n && n != 0)
    };
    let has_image = all_or_none(
        IMAGE_NAME,
        set.particles.iter().filter(|p| p.image.is_some()).count(),
    )?;
    let has_pose = all_or_none(
        "_rlnAngleRot/Tilt/Psi",
        set.particles.iter().filter(|p| p.pose.is_some()).count(),
    )?;
    let has_class = all_or_none(
        CLASS,
        set.particles.iter().filter(|p| p.class.is_some()).count(),
    )?;

    let mut labels: Vec<&str> = Vec::new();
    if has_image {
        labels.push(IMAGE_NAME);
    }
    labels.extend([
        OPTICS_GROUP,
        DEFOCUS_U,
        DEFOCUS_V,
        DEFOCUS_ANGLE,
        PHASE_SHIFT,
        BFACTOR,
        SCALE,
        ORIGIN_X_ANGST,
        ORIGIN_Y_ANGST,
    ]);
    if has_pose {
        labels.extend([ANGLE_ROT, ANGLE_TILT, ANGLE_PSI]);
    }
    if has_class {
        labels.push(CLASS);
    }
    let mut all_labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    for (label, values) in &set.extra {
        if all_labels.contains(label) {
            return Err(invalid(
                label.clone(),
                "an extra column repeats a written label".into(),
            ));
        }
        if values.len() != n {
            return Err(invalid(
                label.clone(),
                format!("extra column has {} values for {n} particles", values.len()),
            ));
        }
        all_labels.push(label.clone());
    }

    let out_dir = lexical_normalize(&absolute(path.parent().unwrap_or(Path::new(""))));
    let mut names: HashMap<&Path, String> = HashMap::new();
    let mut pt = StarTable::new(all_labels);
    let mut row = RowBuf::default();
    for (i, p) in set.particles.iter().enumerate() {
        let field = |l: &str| format!("particle {}, {l}", i + 1);
        let g = set.optics.get(p.optics_group).ok_or_else(|| {
            invalid(
                field(OPTICS_GROUP),
                format!(
                    "optics group index {} but the set has {} groups",
                    p.optics_group,
                    set.optics.len()
                ),
            )
        })?;
        for (name, a, b) in [
            (VOLTAGE, p.ctf.voltage, g.voltage),
            (CS, p.ctf.cs, g.cs),
            (Q0, p.ctf.amplitude_contrast, g.amplitude_contrast),
        ] {
            if a.to_bits() != b.to_bits() {
                return Err(invalid(
                    field(name),
                    format!(
                        "the particle's CTF has {a} but its optics group {} has {b}; \
                         RELION 3.1 keeps it per group",
                        g.id
                    ),
                ));
            }
        }
        row.clear();
        if has_image {
            let im = p
                .image
                .as_ref()
                .expect("checked: all particles have images");
            let rel = match names.entry(im.path.as_path()) {
                Entry::Occupied(e) => e.get().clone(),
                Entry::Vacant(e) => {
                    let stack = lexical_normalize(&absolute(&set.resolve(im)));
                    let rel = relative_path(&stack, &out_dir).unwrap_or(stack);
                    let text = rel.to_str().ok_or_else(|| {
                        invalid(
                            field(IMAGE_NAME),
                            format!("stack path {} is not UTF-8", rel.display()),
                        )
                    })?;
                    e.insert(text.to_owned()).clone()
                }
            };
            let _ = write!(row.text, "{:06}@{rel}", im.index as u128 + 1);
            row.end();
        }
        let _ = write!(row.text, "{}", g.id);
        row.end();
        for (label, v) in [
            (DEFOCUS_U, p.ctf.defocus_u),
            (DEFOCUS_V, p.ctf.defocus_v),
            (DEFOCUS_ANGLE, p.ctf.defocus_angle),
            (PHASE_SHIFT, p.ctf.phase_shift),
            (BFACTOR, p.ctf.bfactor),
            (SCALE, p.ctf.scale),
            (ORIGIN_X_ANGST, p.shift.x),
            (ORIGIN_Y_ANGST, p.shift.y),
        ] {
            row.num(v).map_err(|p| invalid(field(label), p))?;
        }
        if let Some(pose) = p.pose.filter(|_| has_pose) {
            for (label, v) in [
                (ANGLE_ROT, pose.rot),
                (ANGLE_TILT, pose.tilt),
                (ANGLE_PSI, pose.psi),
            ] {
                row.num(v).map_err(|p| invalid(field(label), p))?;
            }
        }
        if let Some(c) = p.class.filter(|_| has_class) {
            let _ = write!(row.text, "{c}");
            row.end();
        }
        for (_, values) in &set.extra {
            row.text.push_str(&values[i]);
            row.end();
        }
        pt.push_row(row.values());
    }

    Ok(StarFile {
        blocks: vec![
            StarBlock {
                name: "optics".into(),
                pairs: Vec::new(),
                table: Some(ot),
            },
            StarBlock {
                name: "particles".into(),
                pairs: Vec::new(),
                table: Some(pt),
            },
        ],
    })
}

/// One table row being built: its values appended to one string, so that a row costs no
/// allocation per value.
#[derive(Default)]
struct RowBuf {
    text: String,
    ends: Vec<usize>,
}

impl RowBuf {
    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    /// Marks the end of the value just written to `text`.
    fn end(&mut self) {
        self.ends.push(self.text.len());
    }

    /// Appends the shortest text that reads back as exactly `v`.
    fn num(&mut self, v: f64) -> std::result::Result<(), String> {
        if !v.is_finite() {
            return Err(format!("{v} cannot be written: expected a finite number"));
        }
        let _ = write!(self.text, "{v:?}");
        self.end();
        Ok(())
    }

    fn values(&self) -> impl Iterator<Item = &str> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.text[s..e])
    }
}

/// The shortest text that reads back as exactly `v` (Rust's `{:?}` for f64).
fn fmt_num(v: f64, path: &Path, field: &str) -> Result<String> {
    if !v.is_finite() {
        return Err(FormatError::invalid(
            path,
            field,
            format!("{v} cannot be written: expected a finite number"),
        ));
    }
    Ok(format!("{v:?}"))
}

/// `path` made absolute against the current folder, without touching the file system.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `path` without `.` components and with `dir/..` pairs removed (lexically).
fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            _ => out.push(c),
        }
    }
    out.iter().collect()
}

/// `target` relative to the folder `base` (both absolute and normalised), or `None` when they
/// share no root.
fn relative_path(target: &Path, base: &Path) -> Option<PathBuf> {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    if t.first() != b.first() {
        return None;
    }
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c.as_os_str());
    }
    Some(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p() -> &'static Path {
        Path::new("mem.star")
    }

    const RELION31: &str = "
# version 30001

data_optics

loop_
_rlnOpticsGroup #1
_rlnOpticsGroupName #2
_rlnAmplitudeContrast #3
_rlnSphericalAberration #4
_rlnVoltage #5
_rlnImagePixelSize #6
_rlnImageSize #7
_rlnImageDimensionality #8
1 opticsGroup1 0.1 2.7 300.0 1.5 64 2
2 'group two' 0.07 2.7 200.0 2.0 64 2


# version 30001

data_particles

loop_
_rlnImageName #1
_rlnOpticsGroup #2
_rlnDefocusU #3
_rlnDefocusV #4
_rlnDefocusAngle #5
_rlnAngleRot #6
_rlnAngleTilt #7
_rlnAnglePsi #8
_rlnOriginXAngst #9
_rlnOriginYAngst #10
_rlnClassNumber #11
_rlnRandomSubset #12
000001@stacks/a.mrcs 1 10000.0 9000.0 12.5 10 20 30 1.5 -2.5 1 1
000002@stacks/a.mrcs 2 11000.0 10500.0 -3 40 50 60 0 0 2 2
3@b.mrcs 1 12000.0 12000 0 70 80 90 0.25 0.5 1 1
";

    #[test]
    fn parses_blocks_pairs_quotes_and_comments() {
        let text = "# a comment\r\ndata_\r\n_rlnKey  'a value'  # trailing\r\n_other 3\n\n\
                    loop_\n_rlnA #1\n_rlnB\n  1 \"x y\"  \n\n# inside\n2 z\t\n\
                    data_second\nloop_\n_c\n";
        let f = parse_star(text, p()).unwrap();
        assert_eq!(f.blocks.len(), 2);
        let b = &f.blocks[0];
        assert_eq!(b.name, "");
        assert_eq!(b.pair("_rlnKey"), Some("a value"));
        assert_eq!(b.pair("_other"), Some("3"));
        let t = b.table.as_ref().unwrap();
        assert_eq!(t.labels, ["_rlnA", "_rlnB"]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(0, 1), Some("x y"));
        assert_eq!(t.get(1, 0), Some("2"));
        assert_eq!(t.get(1, 1), Some("z"));
        assert_eq!(t.get(2, 0), None);
        assert_eq!(t.column("_rlnB"), Some(1));
        let second = f.block("second").unwrap().table.as_ref().unwrap();
        assert_eq!((second.labels.len(), second.len()), (1, 0));
    }

    #[test]
    fn quote_closes_only_before_whitespace() {
        let f = parse_star("data_x\nloop_\n_a\n_b\n'it's' \"\"\n", p()).unwrap();
        let t = f.blocks[0].table.as_ref().unwrap();
        assert_eq!(t.row(0).collect::<Vec<_>>(), ["it's", ""]);
    }

    #[test]
    fn rejects_rows_of_the_wrong_length_naming_the_line() {
        let e = parse_star("data_x\nloop_\n_a\n_b\n1 2\n3\n", p())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 6") && e.contains("row 2 has 1 values, expected 2"),
            "{e}"
        );
        let e = parse_star("data_x\nloop_\n_a\n'open\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unterminated"), "{e}");
        let e = parse_star("_a 1\n", p()).unwrap_err().to_string();
        assert!(e.contains("expected `data_`"), "{e}");
    }

    #[test]
    fn write_then_parse_round_trips_awkward_values() {
        let mut t = StarTable::new(vec!["_a".into(), "_b".into(), "_c".into()]);
        t.push_row(["1", "with space", ""]);
        t.push_row(["data_x", "_under", "it's \"quoted\""]);
        t.push_row(["#hash", "[1,2,3]", "plain"]);
        let file = StarFile {
            blocks: vec![
                StarBlock {
                    name: "kv".into(),
                    pairs: vec![("_k".into(), "v w".into())],
                    table: None,
                },
                StarBlock {
                    name: "t".into(),
                    pairs: Vec::new(),
                    table: Some(t),
                },
            ],
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.star");
        write_star(&out, &file).unwrap();
        assert_eq!(read_star(&out).unwrap(), file);
        // Only the output is left in the folder: the temporary file was renamed.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    /// A column (or a pair) given twice is refused, naming it and both places: which copy
    /// would count is otherwise left to chance (issue 13, class 5).
    #[test]
    fn a_repeated_label_is_refused_naming_both_columns() {
        let text = RELION31.replace("_rlnClassNumber #11", "_rlnDefocusU #11");
        let e = parse_star(&text, p()).unwrap_err().to_string();
        assert!(
            e.contains("_rlnDefocusU") && e.contains("columns 3 and 11"),
            "{e}"
        );
        let e = parse_star("data_\n_rlnA 1\n_rlnA 2\n", p())
            .unwrap_err()
            .to_string();
        assert!(e.contains("_rlnA") && e.contains("twice"), "{e}");
    }

    fn write_tmp(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_relion31_particles() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_tmp(dir.path(), "p.star", RELION31);
        let set = read_particles(&path, &StarOptions::default()).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.optics.len(), 2);
        assert_eq!(set.optics[1].name, "group two");
        assert_eq!(
            set.optics[0].extra,
            [("_rlnImageDimensionality".to_string(), "2".to_string())]
        );
        let p1 = &set.particles[1];
        assert_eq!(p1.optics_group, 1);
        assert_eq!(p1.ctf.voltage, 200.0);
        assert_eq!(p1.ctf.amplitude_contrast, 0.07);
        assert_eq!(p1.ctf.defocus_angle, -3.0);
        assert_eq!(
            (p1.ctf.phase_shift, p1.ctf.bfactor, p1.ctf.scale),
            (0.0, 0.0, 1.0)
        );
        assert_eq!(p1.pose, Some(Pose::new(40.0, 50.0, 60.0)));
        assert_eq!(p1.class, Some(2));
        let p0 = &set.particles[0];
        assert_eq!((p0.shift.x, p0.shift.y), (1.5, -2.5));
        assert_eq!(
            p0.image,
            Some(ImageRef {
                path: "stacks/a.mrcs".into(),
                index: 0
            })
        );
        assert_eq!(set.particles[2].image.as_ref().unwrap().index, 2);
        assert_eq!(
            set.extra_column("_rlnRandomSubset").unwrap(),
            ["1", "2", "1"]
        );
        assert_eq!(set.base_dir, absolute(dir.path()));
    }

    #[test]
    fn reads_relion30_with_pixel_shifts_and_groups_optics() {
        let text = "data_images\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnVoltage\n\
                    _rlnSphericalAberration\n_rlnDetectorPixelSize\n_rlnMagnification\n\
                    _rlnOriginX\n_rlnOriginY\n\
                    1@s.mrcs 10000 300 2.7 5 10000 2 -1\n\
                    2@s.mrcs 10000 200 2.7 5 10000 0 0\n\
                    s.mrcs 10000 300 2.7 5 10000 0 0\n";
        let dir = tempfile::tempdir().unwrap();
        let path = write_tmp(dir.path(), "p.star", text);
        let set = read_particles(&path, &StarOptions::default()).unwrap();
        assert_eq!(set.optics.len(), 2);
        assert_eq!(set.optics[0].pixel_size, 5.0);
        assert_eq!(set.optics[0].amplitude_contrast, 0.0);
        assert_eq!(
            set.particles
                .iter()
                .map(|p| p.optics_group)
                .collect::<Vec<_>>(),
            [0, 1, 0]
        );
        assert_eq!(
            (set.particles[0].shift.x, set.particles[0].shift.y),
            (10.0, -5.0)
        );
        assert_eq!(set.particles[0].ctf.defocus_v, 10000.0);
        assert_eq!(set.particles[2].image.as_ref().unwrap().index, 0);
        assert!(set.extra.is_empty());
        assert!(set.particles[0].pose.is_none());
    }

    #[test]
    fn errors_name_file_block_label_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let no_defocus = RELION31.replace("_rlnDefocusU #3", "_rlnSomethingElse #3");
        let path = write_tmp(dir.path(), "a.star", &no_defocus);
        let e = read_particles(&path, &StarOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a.star") && e.contains("data_particles") && e.contains("_rlnDefocusU"),
            "{e}"
        );

        let bad = RELION31.replace("11000.0", "11O00.0");
        let path = write_tmp(dir.path(), "b.star", &bad);
        let e = read_particles(&path, &StarOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.star") && e.contains("_rlnDefocusU, row 2") && e.contains("\"11O00.0\""),
            "{e}"
        );

        let unknown = RELION31.replace("000002@stacks/a.mrcs 2", "000002@stacks/a.mrcs 7");
        let path = write_tmp(dir.path(), "c.star", &unknown);
        let e = read_particles(&path, &StarOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("optics group 7"), "{e}");

        let zero = RELION31.replace("000001@stacks", "000000@stacks");
        let path = write_tmp(dir.path(), "d.star", &zero);
        let e = read_particles(&path, &StarOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("_rlnImageName, row 1") && e.contains("image number"),
            "{e}"
        );

        let no_apix = RELION31.replace("_rlnImagePixelSize #6", "_rlnNotPixelSize #6");
        let path = write_tmp(dir.path(), "e.star", &no_apix);
        let e = read_particles(&path, &StarOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("_rlnImagePixelSize") && e.contains("--apix"),
            "{e}"
        );
        let opts = StarOptions {
            apix: Some(1.25),
            ..Default::default()
        };
        let set = read_particles(&path, &opts).unwrap();
        assert!(set.optics.iter().all(|o| o.pixel_size == 1.25));
    }

    #[test]
    fn data_dir_falls_back_to_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("b.mrcs"), b"").unwrap();
        let path = write_tmp(
            dir.path(),
            "p.star",
            &RELION31.replace("3@b.mrcs", "3@deep/er/b.mrcs"),
        );
        let opts = StarOptions {
            data_dir: Some(data.clone()),
            ..Default::default()
        };
        let set = read_particles(&path, &opts).unwrap();
        assert_eq!(set.base_dir, absolute(&data));
        let im = set.particles[2].image.as_ref().unwrap();
        assert_eq!(im.path, PathBuf::from("b.mrcs"));
        assert_eq!(set.resolve(im), absolute(&data).join("b.mrcs"));
        // A stack found nowhere keeps the path as written.
        assert_eq!(
            set.particles[0].image.as_ref().unwrap().path,
            PathBuf::from("stacks/a.mrcs")
        );
    }

    #[test]
    fn write_then_read_particles_reproduces_the_set() {
        let dir = tempfile::tempdir().unwrap();
        let src = write_tmp(dir.path(), "p.star", RELION31);
        let mut set = read_particles(&src, &StarOptions::default()).unwrap();
        set.particles[0].ctf.bfactor = 37.5;
        set.particles[1].ctf.phase_shift = 1.0 / 3.0;
        set.particles[2].shift.x = 1e-9;
        let out = dir.path().join("out.star");
        write_particles(&out, &set).unwrap();
        let back = read_particles(&out, &StarOptions::default()).unwrap();
        assert_eq!(back, set);
        // Into another folder: image paths become relative to it.
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        write_particles(&sub.join("out.star"), &set).unwrap();
        let text = std::fs::read_to_string(sub.join("out.star")).unwrap();
        assert!(
            text.contains("000001@../stacks/a.mrcs")
                && text.starts_with("\n# version 30001\n\ndata_optics"),
            "{text}"
        );
        let back = read_particles(&sub.join("out.star"), &StarOptions::default()).unwrap();
        for (a, b) in back.particles.iter().zip(&set.particles) {
            let (ia, ib) = (a.image.as_ref().unwrap(), b.image.as_ref().unwrap());
            assert_eq!(lexical_normalize(&back.resolve(ia)), set.resolve(ib));
        }
    }

    #[test]
    fn writer_refuses_inconsistent_sets() {
        let dir = tempfile::tempdir().unwrap();
        let src = write_tmp(dir.path(), "p.star", RELION31);
        let set = read_particles(&src, &StarOptions::default()).unwrap();
        let out = dir.path().join("out.star");
        let mut s = set.clone();
        s.particles[0].pose = None;
        assert!(
            write_particles(&out, &s)
                .unwrap_err()
                .to_string()
                .contains("2 of 3")
        );
        let mut s = set.clone();
        s.particles[0].ctf.voltage = 120.0;
        assert!(
            write_particles(&out, &s)
                .unwrap_err()
                .to_string()
                .contains("_rlnVoltage")
        );
        let mut s = set.clone();
        s.extra.push(("_rlnDefocusU".into(), vec!["1".into(); 3]));
        assert!(
            write_particles(&out, &s)
                .unwrap_err()
                .to_string()
                .contains("repeats")
        );
        let mut s = set;
        s.particles[0].ctf.defocus_u = f64::NAN;
        assert!(
            write_particles(&out, &s)
                .unwrap_err()
                .to_string()
                .contains("finite")
        );
        assert!(!out.exists());
    }

    #[test]
    fn large_table_parses() {
        let mut text = String::from("data_particles\nloop_\n");
        for c in 0..20 {
            let _ = writeln!(text, "_rlnCol{c} #{}", c + 1);
        }
        for r in 0..20_000 {
            for c in 0..20 {
                let _ = write!(text, "{:>12.6} ", (r * 20 + c) as f64 * 0.5);
            }
            text.push('\n');
        }
        let f = parse_star(&text, p()).unwrap();
        let t = f.blocks[0].table.as_ref().unwrap();
        assert_eq!((t.len(), t.width()), (20_000, 20));
        assert_eq!(
            t.get(19_999, 19).unwrap().parse::<f64>().unwrap(),
            199_999.5
        );
    }

    /// Small random edits of a valid file: replace, insert or delete one character.
    fn mutated(base: &'static str) -> impl Strategy<Value = String> {
        prop::collection::vec((0..base.len(), 0u8..3, prop::char::any()), 1..6).prop_map(
            move |edits| {
                let mut s: Vec<char> = base.chars().collect();
                for (at, kind, ch) in edits {
                    let at = at % (s.len() + 1);
                    match kind {
                        0 if at < s.len() => s[at] = ch,
                        1 => s.insert(at, ch),
                        _ if at < s.len() => {
                            s.remove(at);
                        }
                        _ => {}
                    }
                }
                s.into_iter().collect()
            },
        )
    }

    fn structural_chars() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec![
                "data_",
                "loop_",
                "_rlnImageName",
                "_rlnDefocusU",
                "_rlnVoltage",
                "_rlnSphericalAberration",
                "_rlnOpticsGroup",
                "data_optics",
                "data_particles",
                "1@a.mrcs",
                "'",
                "\"",
                "#",
                " ",
                "\n",
                "\t",
                "1",
                "-2.5e3",
                "nan",
                "x",
            ]),
            0..60,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in ".{0,400}") {
            let ((), largest) = mcg_testdata::alloc::measured(|| {
                if let Ok(f) = parse_star(&s, p()) {
                    let _ = particles_from_star(&f, p(), &StarOptions::default());
                }
            });
            prop_assert!(largest <= mcg_testdata::alloc::bound(s.len()), "{largest} bytes");
        }

        #[test]
        fn never_panics_on_star_like_text(s in structural_chars()) {
            let ((), largest) = mcg_testdata::alloc::measured(|| {
                if let Ok(f) = parse_star(&s, p()) {
                    let opts = StarOptions { apix: Some(1.0), ..Default::default() };
                    let _ = particles_from_star(&f, p(), &opts);
                }
            });
            prop_assert!(largest <= mcg_testdata::alloc::bound(s.len()), "{largest} bytes");
        }

        #[test]
        fn rendered_tables_parse_back_to_the_same_values(
            rows in prop::collection::vec(prop::collection::vec("[ -~\t]{0,12}", 3), 0..6),
            pair in "[ -~]{0,12}",
        ) {
            let mut t = StarTable::new(vec!["_a".into(), "_b".into(), "_c".into()]);
            for r in &rows {
                t.push_row(r);
            }
            let file = StarFile {
                blocks: vec![StarBlock {
                    name: "x".into(),
                    pairs: vec![("_k".into(), pair)],
                    table: Some(t),
                }],
            };
            // Values holding both `" ` and `' ` cannot be quoted; everything else must survive.
            if let Ok(text) = render_star(&file, None, p()) {
                prop_assert_eq!(parse_star(&text, p()).unwrap(), file);
            }
        }

        #[test]
        fn never_panics_on_mutated_files(s in mutated(RELION31)) {
            if let Ok(f) = parse_star(&s, p()) {
                let _ = particles_from_star(&f, p(), &StarOptions::default());
            }
        }
    }
}
