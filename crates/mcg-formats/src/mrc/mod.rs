//! MRC2014 maps and image stacks: reading (modes 0, 1, 2, 6 and 12, either byte order), lazy
//! random access to stacks, and atomic float32 writing.
//!
//! An MRC file is a 1024-byte header of 4-byte words, an extended header of NSYMBT bytes, then
//! NX·NY·NZ voxels with x (columns) fastest. Arrays here are `[z][y][x]`
//! (`[section][row][column]`) and images `[y][x]`, as in `conventions.md`.
//!
//! **Invariant:** no byte input makes a reader panic. Every header word that sizes or locates
//! data is checked before it is used, and the file length must equal what the header announces,
//! so a header that lies is an error naming the file, the word, what was found and what was
//! expected.
//!
//! **Invariant:** writers write to a temporary name in the destination folder and rename it when
//! the file is complete, so nothing half-written ever appears under the final name.

use crate::half::f16_to_f32;

mod header;
mod read;
#[cfg(test)]
mod tests;
mod write;

use header::*;
use read::*;
use write::*;

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use mcg_physics::Volume;
use ndarray::{Array3, ArrayView3, ArrayViewMut2, ArrayViewMut3};

use crate::{FormatError, Result};

/// Byte order of the words and voxels of an MRC file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endian {
    /// Little-endian (machine stamp `0x44 0x44 0 0` or `0x44 0x41 0 0`); what we write.
    Little,
    /// Big-endian (machine stamp `0x11 0x11 0 0`).
    Big,
}

/// The voxel types this crate reads (the MRC2014 MODE word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MrcMode {
    /// MODE 0: signed 8-bit integers (MRC2014; some old IMOD files meant unsigned).
    Int8,
    /// MODE 1: signed 16-bit integers.
    Int16,
    /// MODE 2: 32-bit IEEE floats, the only mode written.
    Float32,
    /// MODE 6: unsigned 16-bit integers.
    Uint16,
    /// MODE 12: 16-bit IEEE floats (half precision).
    Float16,
}

impl MrcMode {
    /// The mode for a MODE word, or `None` for a mode this crate cannot read.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Self::Int8),
            1 => Some(Self::Int16),
            2 => Some(Self::Float32),
            6 => Some(Self::Uint16),
            12 => Some(Self::Float16),
            _ => None,
        }
    }

    /// The MODE word of this mode.
    pub fn code(self) -> i32 {
        match self {
            Self::Int8 => 0,
            Self::Int16 => 1,
            Self::Float32 => 2,
            Self::Uint16 => 6,
            Self::Float16 => 12,
        }
    }

    /// Bytes one voxel takes in the file.
    pub fn bytes_per_voxel(self) -> usize {
        match self {
            Self::Int8 => 1,
            Self::Int16 | Self::Uint16 | Self::Float16 => 2,
            Self::Float32 => 4,
        }
    }
}

/// Every word of an MRC2014 header, decoded, plus the byte order it was read in.
///
/// A header returned by this module has been validated: NX, NY, NZ are positive, NSYMBT is not
/// negative, and the file is exactly as long as the header says.
#[derive(Debug, Clone, PartialEq)]
pub struct MrcHeader {
    /// NX: number of columns (the fastest axis).
    pub nx: i32,
    /// NY: number of rows.
    pub ny: i32,
    /// NZ: number of sections (images in a stack).
    pub nz: i32,
    /// MODE: the voxel type.
    pub mode: MrcMode,
    /// NXSTART: index of the first column in the unit cell.
    pub nxstart: i32,
    /// NYSTART: index of the first row in the unit cell.
    pub nystart: i32,
    /// NZSTART: index of the first section in the unit cell.
    pub nzstart: i32,
    /// MX: number of intervals along x of the unit cell (its sampling).
    pub mx: i32,
    /// MY: number of intervals along y of the unit cell.
    pub my: i32,
    /// MZ: number of intervals along z of the unit cell (1 for image stacks).
    pub mz: i32,
    /// CELLA: unit-cell lengths along x, y, z, Å.
    pub cell: [f32; 3],
    /// CELLB: unit-cell angles α, β, γ, degrees.
    pub cell_angles: [f32; 3],
    /// MAPC: the axis (1 = x, 2 = y, 3 = z) along the columns.
    pub mapc: i32,
    /// MAPR: the axis along the rows.
    pub mapr: i32,
    /// MAPS: the axis along the sections.
    pub maps: i32,
    /// DMIN: minimum density value (as written; not checked).
    pub dmin: f32,
    /// DMAX: maximum density value.
    pub dmax: f32,
    /// DMEAN: mean density value.
    pub dmean: f32,
    /// ISPG: space group; 0 for images and image stacks, 1 for a volume, 401–630 for volume
    /// stacks.
    pub ispg: i32,
    /// NSYMBT: length of the extended header in bytes, skipped when reading voxels.
    pub nsymbt: i32,
    /// EXTRA, bytes 96–103 of the header.
    pub extra1: [u8; 8],
    /// EXTTYP: the extended header's type, four ASCII characters (`CCP4`, `FEI1`, …).
    pub exttyp: [u8; 4],
    /// NVERSION: format version, 20140 for MRC2014 (0 in old files).
    pub nversion: i32,
    /// EXTRA, bytes 112–195 of the header (IMOD keeps its stamp and flags here).
    pub extra2: [u8; 84],
    /// ORIGIN: origin of the map in x, y, z, Å.
    pub origin: [f32; 3],
    /// MAP: the characters `MAP ` in a conforming file; zero in sloppy ones.
    pub map: [u8; 4],
    /// MACHST: the machine stamp as found (may be zero or garbage).
    pub machine_stamp: [u8; 4],
    /// RMS: standard deviation of the density from its mean (negative when not computed).
    pub rms: f32,
    /// NLABL: number of labels in use, as written.
    pub nlabl: i32,
    /// The first `min(NLABL, 10)` labels, trailing spaces and NULs removed.
    pub labels: Vec<String>,
    /// The byte order the header and voxels were read in: from the machine stamp, or, when the
    /// stamp is zero or garbage, the order in which MODE and the dimensions make sense.
    pub endian: Endian,
}

impl MrcHeader {
    /// Voxel (pixel) size in Å along x: cell length / MX, or `None` when MX or the cell length
    /// is zero, negative or not finite.
    ///
    /// A header with MX = 1 and a cell of 1 Å gives 1.0, which is legal but often means "not
    /// set" (cryoDRGN's toy data); callers that know better (metadata, a flag) should override.
    pub fn voxel_size(&self) -> Option<f64> {
        let cell = f64::from(self.cell[0]);
        if self.mx <= 0 || !cell.is_finite() || cell <= 0.0 {
            return None;
        }
        let apix = cell / f64::from(self.mx);
        (apix.is_finite() && apix > 0.0).then_some(apix)
    }

    /// Whether the header describes a stack of 2D images rather than one volume.
    ///
    /// The header alone cannot always tell, so this is a heuristic: ISPG 0 (MRC2014 images and
    /// image stacks) is a stack; ISPG 401–630 (volume stacks) is not; otherwise a file with more
    /// than one section is a stack when MZ is 1 or MZ is positive and differs from NZ (writers
    /// that put ISPG 1 on stacks). Some volumes carry ISPG 0 (cryoDRGN's `spike-vol.mrc`) and
    /// some stacks ISPG 1 with MZ = NZ (`empiar_10076_7.mrc`); the file name (`.mrcs`) and the
    /// caller's intent decide in the end.
    pub fn is_stack(&self) -> bool {
        match self.ispg {
            0 => true,
            401..=630 => false,
            _ => self.nz > 1 && (self.mz == 1 || (self.mz > 0 && self.mz != self.nz)),
        }
    }

    /// The array shape `(NZ, NY, NX)`, `[z][y][x]`.
    pub fn shape(&self) -> (usize, usize, usize) {
        (dim(self.nz), dim(self.ny), dim(self.nx))
    }

    /// Byte offset of the first voxel: the header plus the extended header.
    pub fn data_offset(&self) -> u64 {
        HEADER_LEN as u64 + u64::try_from(self.nsymbt).unwrap_or(0)
    }
}

/// What an array written to an MRC file is: this sets ISPG and MZ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MrcKind {
    /// One volume: ISPG 1, MZ = NZ, cell z = NZ·apix.
    Volume,
    /// A stack of 2D images (`.mrcs`): ISPG 0, MZ = 1, cell z = apix.
    Stack,
}

/// A whole MRC file in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct MrcData {
    /// The validated header.
    pub header: MrcHeader,
    /// The voxels as f32, `[NZ][NY][NX]` in file order (MAPC/MAPR/MAPS are not applied here;
    /// [`read_volume`] applies them).
    pub data: Array3<f32>,
}

/// Reads and validates the header of the MRC file at `path` (the file length is checked against
/// the header, the voxels are not read).
pub fn read_header(path: &Path) -> Result<MrcHeader> {
    let file = File::open(path).map_err(|e| FormatError::io(path, "open", e))?;
    let len = file_len(&file, path)?;
    header_from(&file, len, path)
}

/// Reads a whole MRC file: its header and all voxels converted to f32, `[NZ][NY][NX]`, whatever
/// the shape (a non-cubic map stays non-cubic).
pub fn read(path: &Path) -> Result<MrcData> {
    let file = File::open(path).map_err(|e| FormatError::io(path, "open", e))?;
    let len = file_len(&file, path)?;
    read_from(&file, len, path)
}

/// Reads a volume: a cubic map with an even edge, its axes put in `[z][y][x]` order when
/// MAPC/MAPR/MAPS say the file stores them otherwise.
///
/// The voxel size is `apix_override` (Å) when given, else the header's
/// [`MrcHeader::voxel_size`]; it is an error when neither gives one.
pub fn read_volume(path: &Path, apix_override: Option<f64>) -> Result<Volume> {
    let MrcData { header, data } = read(path)?;
    if header.is_stack() {
        tracing::warn!(
            path = %path.display(),
            ispg = header.ispg,
            mz = header.mz,
            "reading as a volume a file whose header marks an image stack"
        );
    }
    let data = to_xyz_order(data, &header, path);
    let (nz, ny, nx) = data.dim();
    // A NaN or infinite voxel would make every projection, FSC or training step of the map
    // non-finite: refuse it, naming the first.
    if let Some((index, v)) = data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        let (z, y, x) = (index / (ny * nx), index / nx % ny, index % nx);
        return Err(FormatError::invalid(
            path,
            "voxel values",
            format!("found {v} at voxel (x {x}, y {y}, z {z}), expected finite numbers"),
        ));
    }
    if nz != ny || ny != nx || nx % 2 != 0 {
        return Err(FormatError::invalid(
            path,
            "NX×NY×NZ",
            format!("found {nx}×{ny}×{nz}, expected a cubic volume with an even edge"),
        ));
    }
    let apix = match apix_override {
        Some(apix) if apix.is_finite() && apix > 0.0 => apix,
        Some(apix) => {
            return Err(FormatError::invalid(
                path,
                "voxel size",
                format!("found {apix} Å given, expected a finite number above 0"),
            ));
        }
        None => header.voxel_size().ok_or_else(|| {
            FormatError::invalid(
                path,
                "CELLA/MX",
                format!(
                    "found cell {} Å over MX {}, expected a positive voxel size; give one",
                    header.cell[0], header.mx
                ),
            )
        })?,
    };
    Volume::new(data, apix as f32).map_err(|e| FormatError::invalid(path, "volume", e.to_string()))
}

/// Random access to the images of an MRC stack, read from the file on demand.
///
/// The file stays open; images are read with positioned reads, so one `MrcStack` serves many
/// threads at once and memory follows what is read, never the file.
#[derive(Debug)]
pub struct MrcStack {
    path: PathBuf,
    header: MrcHeader,
    file: File,
}

impl MrcStack {
    /// Opens the stack at `path`, reading and validating its header (each section is an image).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| FormatError::io(path, "open", e))?;
        let len = file_len(&file, path)?;
        let header = header_from(&file, len, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            header,
            file,
        })
    }

    /// Number of images (NZ).
    pub fn len(&self) -> usize {
        dim(self.header.nz)
    }

    /// Whether the stack holds no image (never true for a validated header).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape of each image, `(NY, NX)` pixels.
    pub fn image_shape(&self) -> (usize, usize) {
        (dim(self.header.ny), dim(self.header.nx))
    }

    /// The validated header.
    pub fn header(&self) -> &MrcHeader {
        &self.header
    }

    /// The path the stack was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads image `index` (0-based) into `out`, `[NY][NX]`.
    pub fn read_into(&self, index: usize, mut out: ArrayViewMut2<'_, f32>) -> Result<()> {
        self.check_range(index, 1)?;
        let (ny, nx) = self.image_shape();
        if out.dim() != (ny, nx) {
            return Err(self.shape_error(format!("{:?}", out.dim()), format!("({ny}, {nx})")));
        }
        let offset = self.image_offset(index);
        match out.as_slice_mut() {
            Some(slice) => self.read_voxels(offset, slice),
            None => {
                let mut buf = vec![0.0; ny * nx];
                self.read_voxels(offset, &mut buf)?;
                out.iter_mut().zip(&buf).for_each(|(o, &v)| *o = v);
                Ok(())
            }
        }
    }

    /// Reads the images `start .. start + out.len_of(Axis(0))` into `out`, `[n][NY][NX]`, in one
    /// pass over the file.
    pub fn read_range(&self, start: usize, mut out: ArrayViewMut3<'_, f32>) -> Result<()> {
        let (n, oy, ox) = out.dim();
        self.check_range(start, n)?;
        let (ny, nx) = self.image_shape();
        if (oy, ox) != (ny, nx) {
            return Err(
                self.shape_error(format!("({n}, {oy}, {ox})"), format!("({n}, {ny}, {nx})"))
            );
        }
        if n == 0 {
            return Ok(());
        }
        let offset = self.image_offset(start);
        match out.as_slice_mut() {
            Some(slice) => self.read_voxels(offset, slice),
            None => {
                let mut buf = vec![0.0; n * ny * nx];
                self.read_voxels(offset, &mut buf)?;
                out.iter_mut().zip(&buf).for_each(|(o, &v)| *o = v);
                Ok(())
            }
        }
    }
}

/// Writes `volume` as a float32 MRC2014 volume (ISPG 1, MZ = NZ), atomically.
pub fn write_volume(path: &Path, volume: &Volume) -> Result<()> {
    write_array(
        path,
        volume.data().view(),
        f64::from(volume.apix()),
        MrcKind::Volume,
    )
}

/// Writes `data`, `[z][y][x]` (or `[n][y][x]` for a stack), as a float32 little-endian MRC2014
/// file with voxels of `apix` Å, atomically (temporary file, then rename).
pub fn write_array(path: &Path, data: ArrayView3<'_, f32>, apix: f64, kind: MrcKind) -> Result<()> {
    let (_, ny, nx) = data.dim();
    let mut writer = AtomicWriter::create(path, ny, nx, apix, kind)?;
    writer.append(data)?;
    writer.finish()
}

/// Streams images into a float32 MRC2014 stack (ISPG 0, MZ = 1) without holding them all.
///
/// The images go to a temporary file in the destination folder (named by [`mcg_fsio::Staged`]);
/// [`MrcStackWriter::finish`] writes the final header (NZ and statistics) and renames it.
/// Dropping the writer without finishing removes the temporary file.
#[derive(Debug)]
pub struct MrcStackWriter {
    inner: AtomicWriter,
}

impl MrcStackWriter {
    /// Starts a stack of `ny`×`nx`-pixel images of `apix` Å to be written at `path`.
    pub fn create(path: &Path, ny: usize, nx: usize, apix: f64) -> Result<Self> {
        Ok(Self {
            inner: AtomicWriter::create(path, ny, nx, apix, MrcKind::Stack)?,
        })
    }

    /// Appends `images`, `[n][ny][nx]`.
    pub fn append(&mut self, images: ArrayView3<'_, f32>) -> Result<()> {
        self.inner.append(images)
    }

    /// Number of images appended so far.
    pub fn len(&self) -> usize {
        self.inner.sections
    }

    /// Whether no image has been appended yet.
    pub fn is_empty(&self) -> bool {
        self.inner.sections == 0
    }

    /// Writes the header and moves the file to its final name. A stack of no image is an error
    /// (MRC needs NZ ≥ 1) and leaves nothing behind.
    pub fn finish(self) -> Result<()> {
        self.inner.finish()
    }
}

const HEADER_LEN: usize = 1024;

/// Bytes read and decoded at a time: large enough for bulk reads, small enough for the cache.
const CHUNK_BYTES: usize = 1 << 20;

/// A validated dimension as `usize` (validated headers hold positive ones).
fn dim(n: i32) -> usize {
    usize::try_from(n).unwrap_or(0)
}
