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

// ---------------------------------------------------------------------------------------------
// Helpers.

const HEADER_LEN: usize = 1024;

/// Bytes read and decoded at a time: large enough for bulk reads, small enough for the cache.
const CHUNK_BYTES: usize = 1 << 20;

/// MODE words of the MRC2014 standard, readable or not, for byte-order detection.
const KNOWN_MODES: [i32; 8] = [0, 1, 2, 3, 4, 6, 12, 101];

/// A validated dimension as `usize` (validated headers hold positive ones).
fn dim(n: i32) -> usize {
    usize::try_from(n).unwrap_or(0)
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| FormatError::io(path, "stat", e))
}

/// Positioned reads from a file or a byte buffer, so that one reader serves both the file
/// readers and the in-memory tests, and a shared `&File` reads from many threads.
trait ReadAt {
    /// Fills `buf` with the bytes at `offset`, or fails with `UnexpectedEof`.
    fn read_at_exact(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    #[cfg(unix)]
    fn read_at_exact(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    #[cfg(windows)]
    fn read_at_exact(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        use std::os::windows::fs::FileExt;
        while !buf.is_empty() {
            match self.seek_read(buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    #[cfg(not(any(unix, windows)))]
    fn read_at_exact(&self, _buf: &mut [u8], _offset: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

impl ReadAt for [u8] {
    fn read_at_exact(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(buf.len())?))
            .and_then(|range| self.get(range))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Reads the header of a source of `len` bytes and validates it against that length.
fn header_from<S: ReadAt + ?Sized>(src: &S, len: u64, path: &Path) -> Result<MrcHeader> {
    if len < HEADER_LEN as u64 {
        return Err(FormatError::invalid(
            path,
            "file length",
            format!("found {len} bytes, expected at least {HEADER_LEN} (the MRC2014 header)"),
        ));
    }
    let mut bytes = [0u8; HEADER_LEN];
    src.read_at_exact(&mut bytes, 0)
        .map_err(|e| FormatError::io(path, "read header", e))?;
    parse_header(&bytes, len, path)
}

/// Reads a whole MRC file from a source of `len` bytes.
fn read_from<S: ReadAt + ?Sized>(src: &S, len: u64, path: &Path) -> Result<MrcData> {
    let header = header_from(src, len, path)?;
    let shape = header.shape();
    // The length check in `parse_header` bounds this allocation by the file size.
    let mut data = vec![0.0f32; shape.0 * shape.1 * shape.2];
    read_voxels(
        src,
        header.data_offset(),
        header.mode,
        header.endian,
        &mut data,
    )
    .map_err(|e| FormatError::io(path, "read voxels", e))?;
    let data = Array3::from_shape_vec(shape, data)
        .map_err(|e| FormatError::invalid(path, "NX×NY×NZ", e.to_string()))?;
    Ok(MrcData { header, data })
}

/// Reads `out.len()` voxels at byte `offset` and converts them to f32, a chunk at a time.
fn read_voxels<S: ReadAt + ?Sized>(
    src: &S,
    offset: u64,
    mode: MrcMode,
    endian: Endian,
    out: &mut [f32],
) -> io::Result<()> {
    let bpv = mode.bytes_per_voxel();
    let per_chunk = CHUNK_BYTES / bpv;
    let mut buf = vec![0u8; out.len().min(per_chunk) * bpv];
    let mut at = offset;
    for chunk in out.chunks_mut(per_chunk) {
        let bytes = &mut buf[..chunk.len() * bpv];
        src.read_at_exact(bytes, at)?;
        decode(mode, endian, bytes, chunk);
        at += bytes.len() as u64;
    }
    Ok(())
}

/// Converts voxels of `mode` in byte order `endian` to f32; `bytes` holds exactly
/// `out.len()` voxels.
fn decode(mode: MrcMode, endian: Endian, bytes: &[u8], out: &mut [f32]) {
    use Endian::{Big, Little};
    match (mode, endian) {
        (MrcMode::Int8, _) => {
            for (o, &b) in out.iter_mut().zip(bytes) {
                *o = f32::from(b as i8);
            }
        }
        (MrcMode::Int16, Little) => map_words(bytes, out, |w| f32::from(i16::from_le_bytes(w))),
        (MrcMode::Int16, Big) => map_words(bytes, out, |w| f32::from(i16::from_be_bytes(w))),
        (MrcMode::Uint16, Little) => map_words(bytes, out, |w| f32::from(u16::from_le_bytes(w))),
        (MrcMode::Uint16, Big) => map_words(bytes, out, |w| f32::from(u16::from_be_bytes(w))),
        (MrcMode::Float16, Little) => map_words(bytes, out, |w| f16_to_f32(u16::from_le_bytes(w))),
        (MrcMode::Float16, Big) => map_words(bytes, out, |w| f16_to_f32(u16::from_be_bytes(w))),
        (MrcMode::Float32, Little) => map_words(bytes, out, f32::from_le_bytes),
        (MrcMode::Float32, Big) => map_words(bytes, out, f32::from_be_bytes),
    }
}

fn map_words<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
    let (words, _) = bytes.as_chunks::<N>();
    for (o, &w) in out.iter_mut().zip(words) {
        *o = f(w);
    }
}

/// A reader of the header's 4-byte words in one byte order.
#[derive(Clone, Copy)]
struct Words<'a> {
    bytes: &'a [u8; HEADER_LEN],
    endian: Endian,
}

impl Words<'_> {
    fn raw(&self, offset: usize) -> [u8; 4] {
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.bytes[offset..offset + 4]);
        w
    }

    fn i32(&self, offset: usize) -> i32 {
        match self.endian {
            Endian::Little => i32::from_le_bytes(self.raw(offset)),
            Endian::Big => i32::from_be_bytes(self.raw(offset)),
        }
    }

    fn f32(&self, offset: usize) -> f32 {
        f32::from_bits(self.i32(offset) as u32)
    }

    fn f32x3(&self, offset: usize) -> [f32; 3] {
        [self.f32(offset), self.f32(offset + 4), self.f32(offset + 8)]
    }

    /// NX, NY, NZ, MODE and NSYMBT: the words that size the file.
    fn layout(&self) -> Layout {
        Layout {
            nx: self.i32(0),
            ny: self.i32(4),
            nz: self.i32(8),
            mode: self.i32(12),
            nsymbt: self.i32(92),
        }
    }
}

/// The header words that size and locate the voxels, as found.
#[derive(Debug, Clone, Copy)]
struct Layout {
    nx: i32,
    ny: i32,
    nz: i32,
    mode: i32,
    nsymbt: i32,
}

impl Layout {
    /// Whether the words make sense in this byte order (whatever the file length).
    fn plausible(&self) -> bool {
        self.nx > 0
            && self.ny > 0
            && self.nz > 0
            && self.nsymbt >= 0
            && KNOWN_MODES.contains(&self.mode)
    }

    /// The file length the header announces, when the words are valid and it fits in a u64.
    fn expected_len(&self) -> Option<u64> {
        let bpv = MrcMode::from_code(self.mode)?.bytes_per_voxel() as u64;
        let voxels = u64::try_from(self.nx)
            .ok()?
            .checked_mul(u64::try_from(self.ny).ok()?)?
            .checked_mul(u64::try_from(self.nz).ok()?)?;
        voxels
            .checked_mul(bpv)?
            .checked_add(HEADER_LEN as u64)?
            .checked_add(u64::try_from(self.nsymbt).ok()?)
    }

    fn fits(&self, file_len: u64) -> bool {
        self.plausible() && self.expected_len() == Some(file_len)
    }
}

/// The byte order of a header: the machine stamp's when the words make sense in it; else the
/// order in which the words make sense and match the file length; else the one in which they
/// make sense; else the stamp's or little-endian (and validation then reports the bad word).
fn detect_endian(bytes: &[u8; HEADER_LEN], file_len: u64) -> Endian {
    let stamped = match (bytes[212], bytes[213]) {
        (0x44 | 0x41, 0x44 | 0x41) => Some(Endian::Little),
        (0x11, 0x11) => Some(Endian::Big),
        _ => None,
    };
    let layout = |endian| Words { bytes, endian }.layout();
    let (little, big) = (layout(Endian::Little), layout(Endian::Big));
    if let Some(endian) = stamped
        && layout(endian).fits(file_len)
    {
        return endian;
    }
    match (little.fits(file_len), big.fits(file_len)) {
        (true, false) => return Endian::Little,
        (false, true) => return Endian::Big,
        _ => {}
    }
    if let Some(endian) = stamped
        && layout(endian).plausible()
    {
        return endian;
    }
    match (little.plausible(), big.plausible()) {
        (false, true) => Endian::Big,
        (true, false) => Endian::Little,
        _ => stamped.unwrap_or(Endian::Little),
    }
}

/// Decodes and validates a header; `file_len` is the length of the whole file.
fn parse_header(bytes: &[u8; HEADER_LEN], file_len: u64, path: &Path) -> Result<MrcHeader> {
    let endian = detect_endian(bytes, file_len);
    let w = Words { bytes, endian };
    let layout = w.layout();
    for (name, value) in [("NX", layout.nx), ("NY", layout.ny), ("NZ", layout.nz)] {
        if value <= 0 {
            return Err(FormatError::invalid(
                path,
                name,
                format!("found {value}, expected a positive number of voxels ({endian:?}-endian)"),
            ));
        }
    }
    let mode = MrcMode::from_code(layout.mode).ok_or_else(|| {
        FormatError::invalid(
            path,
            "MODE",
            format!(
                "found {}{}, expected 0 (int8), 1 (int16), 2 (float32), 6 (uint16) or 12 (float16)",
                layout.mode,
                mode_name(layout.mode)
            ),
        )
    })?;
    if layout.nsymbt < 0 {
        return Err(FormatError::invalid(
            path,
            "NSYMBT",
            format!(
                "found {}, expected an extended-header length ≥ 0",
                layout.nsymbt
            ),
        ));
    }
    let expected = layout.expected_len();
    if expected != Some(file_len) {
        let expected = expected.map_or_else(|| "more than 2⁶⁴".to_owned(), |n| n.to_string());
        return Err(FormatError::invalid(
            path,
            "file length",
            format!(
                "found {file_len} bytes, expected {expected} (1024-byte header + NSYMBT {} + \
                 NX×NY×NZ = {}×{}×{} voxels of {} bytes, MODE {})",
                layout.nsymbt,
                layout.nx,
                layout.ny,
                layout.nz,
                mode.bytes_per_voxel(),
                layout.mode
            ),
        ));
    }
    let nlabl = w.i32(220);
    let labels = (0..usize::try_from(nlabl).unwrap_or(0).min(10))
        .map(|i| {
            let raw = &bytes[224 + 80 * i..304 + 80 * i];
            String::from_utf8_lossy(raw)
                .trim_end_matches([' ', '\0'])
                .to_owned()
        })
        .collect();
    let mut extra1 = [0u8; 8];
    extra1.copy_from_slice(&bytes[96..104]);
    let mut extra2 = [0u8; 84];
    extra2.copy_from_slice(&bytes[112..196]);
    Ok(MrcHeader {
        nx: layout.nx,
        ny: layout.ny,
        nz: layout.nz,
        mode,
        nxstart: w.i32(16),
        nystart: w.i32(20),
        nzstart: w.i32(24),
        mx: w.i32(28),
        my: w.i32(32),
        mz: w.i32(36),
        cell: w.f32x3(40),
        cell_angles: w.f32x3(52),
        mapc: w.i32(64),
        mapr: w.i32(68),
        maps: w.i32(72),
        dmin: w.f32(76),
        dmax: w.f32(80),
        dmean: w.f32(84),
        ispg: w.i32(88),
        nsymbt: layout.nsymbt,
        extra1,
        exttyp: w.raw(104),
        nversion: w.i32(108),
        extra2,
        origin: w.f32x3(196),
        map: w.raw(208),
        machine_stamp: w.raw(212),
        rms: w.f32(216),
        nlabl,
        labels,
        endian,
    })
}

fn mode_name(mode: i32) -> &'static str {
    match mode {
        3 => " (complex int16, not supported)",
        4 => " (complex float32, not supported)",
        101 => " (4-bit, not supported)",
        _ => "",
    }
}

/// Puts the axes of `data`, stored `[sections][rows][columns]`, in `[z][y][x]` order following
/// MAPC/MAPR/MAPS; a header whose words are not a permutation of 1, 2, 3 (sloppy writers leave
/// zeros) is taken as already in order.
fn to_xyz_order(data: Array3<f32>, header: &MrcHeader, path: &Path) -> Array3<f32> {
    let map = [header.mapc, header.mapr, header.maps];
    let is_permutation = {
        let mut sorted = map;
        sorted.sort_unstable();
        sorted == [1, 2, 3]
    };
    if map == [1, 2, 3] || !is_permutation {
        if !is_permutation && map != [0, 0, 0] {
            tracing::warn!(
                path = %path.display(),
                ?map,
                "MAPC/MAPR/MAPS is not a permutation of 1, 2, 3; assuming 1, 2, 3"
            );
        }
        return data;
    }
    // File axis 2 holds the columns (world axis MAPC), 1 the rows, 0 the sections; result axis
    // 0 is z (3), 1 is y (2), 2 is x (1).
    let mut axes = [0usize; 3];
    for (file_axis, &world) in [2usize, 1, 0].iter().zip(&map) {
        axes[3 - world as usize] = *file_axis;
    }
    data.permuted_axes(axes).as_standard_layout().into_owned()
}

/// Running minimum, maximum, mean and sum of squared deviations (Chan et al.'s pairwise
/// update), in f64, so that streamed statistics equal a two-pass computation to rounding.
#[derive(Debug, Clone, Copy)]
struct Stats {
    n: u64,
    mean: f64,
    m2: f64,
    min: f32,
    max: f32,
}

impl Stats {
    fn new() -> Self {
        Self {
            n: 0,
            mean: 0.0,
            m2: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }

    fn push(&mut self, values: &[f32]) {
        if values.is_empty() {
            return;
        }
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let m2 = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>();
        for &v in values {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        let total = self.n as f64 + n;
        let delta = mean - self.mean;
        self.mean += delta * n / total;
        self.m2 += m2 + delta * delta * self.n as f64 * n / total;
        self.n += values.len() as u64;
    }

    /// Standard deviation from the mean (MRC2014/CCP4 RMS).
    fn rms(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }
}

/// A float32 MRC file being written under a temporary name; see [`MrcStackWriter`].
#[derive(Debug)]
struct AtomicWriter {
    dest: PathBuf,
    out: Option<BufWriter<File>>,
    /// Declared after `out`, so that the file is closed before an unfinished one is removed.
    staged: Option<mcg_fsio::Staged>,
    ny: usize,
    nx: usize,
    apix: f64,
    kind: MrcKind,
    sections: usize,
    stats: Stats,
    scratch: Vec<u8>,
}

impl AtomicWriter {
    fn create(dest: &Path, ny: usize, nx: usize, apix: f64, kind: MrcKind) -> Result<Self> {
        if !(apix.is_finite() && apix > 0.0) {
            return Err(FormatError::invalid(
                dest,
                "voxel size",
                format!("found {apix} Å, expected a finite number above 0"),
            ));
        }
        for (name, n) in [("NY", ny), ("NX", nx)] {
            if n == 0 || i32::try_from(n).is_err() {
                return Err(FormatError::invalid(
                    dest,
                    name,
                    format!("found {n}, expected 1 to {}", i32::MAX),
                ));
            }
        }
        if dest.file_name().is_none() {
            return Err(FormatError::invalid(
                dest,
                "path",
                "found no file name, expected a file path",
            ));
        }
        let staged = mcg_fsio::Staged::new(dest)?;
        let file = staged.create()?;
        let mut writer = Self {
            dest: dest.to_path_buf(),
            out: Some(BufWriter::with_capacity(CHUNK_BYTES, file)),
            staged: Some(staged),
            ny,
            nx,
            apix,
            kind,
            sections: 0,
            stats: Stats::new(),
            scratch: Vec::new(),
        };
        // A placeholder header, overwritten by `finish`. On failure the writer's drop closes
        // the file, then removes it.
        if let Some(out) = writer.out.as_mut() {
            out.write_all(&[0u8; HEADER_LEN])
                .map_err(|e| FormatError::io(writer.tmp(), "write header", e))?;
        }
        Ok(writer)
    }

    fn append(&mut self, images: ArrayView3<'_, f32>) -> Result<()> {
        let (n, ny, nx) = images.dim();
        if (ny, nx) != (self.ny, self.nx) {
            return Err(FormatError::invalid(
                &self.dest,
                "NY×NX",
                format!(
                    "found {n} images of {ny}×{nx} appended, expected {}×{}",
                    self.ny, self.nx
                ),
            ));
        }
        let owned;
        let values = match images.as_slice() {
            Some(values) => values,
            None => {
                owned = images.iter().copied().collect::<Vec<f32>>();
                &owned
            }
        };
        let Some(out) = self.out.as_mut() else {
            return Err(FormatError::invalid(&self.dest, "writer", "already failed"));
        };
        for chunk in values.chunks(CHUNK_BYTES / 4) {
            self.stats.push(chunk);
            self.scratch.resize(chunk.len() * 4, 0);
            let (words, _) = self.scratch.as_chunks_mut::<4>();
            for (w, v) in words.iter_mut().zip(chunk) {
                *w = v.to_le_bytes();
            }
            out.write_all(&self.scratch).map_err(|e| {
                let tmp = self
                    .staged
                    .as_ref()
                    .map_or(self.dest.as_path(), |s| s.path());
                FormatError::io(tmp, "write voxels", e)
            })?;
        }
        self.sections += n;
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        let nz = i32::try_from(self.sections)
            .ok()
            .filter(|&nz| nz > 0)
            .ok_or_else(|| {
                FormatError::invalid(
                    &self.dest,
                    "NZ",
                    format!(
                        "found {} sections written, expected 1 to {}",
                        self.sections,
                        i32::MAX
                    ),
                )
            })?;
        let header = output_header(self.ny, self.nx, nz, self.apix, self.kind, &self.stats);
        let out = self
            .out
            .take()
            .ok_or_else(|| FormatError::invalid(&self.dest, "writer", "already failed"))?;
        let mut file = out
            .into_inner()
            .map_err(|e| FormatError::io(self.tmp(), "write voxels", e.into_error()))?;
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.write_all(&encode_header(&header)))
            .map_err(|e| FormatError::io(self.tmp(), "write header", e))?;
        drop(file);
        let staged = self
            .staged
            .take()
            .ok_or_else(|| FormatError::invalid(&self.dest, "writer", "already failed"))?;
        staged.commit()?;
        Ok(())
    }

    /// The temporary file, for errors.
    fn tmp(&self) -> &Path {
        self.staged
            .as_ref()
            .map_or(self.dest.as_path(), |s| s.path())
    }
}

/// The header of a float32 file we write.
fn output_header(
    ny: usize,
    nx: usize,
    nz: i32,
    apix: f64,
    kind: MrcKind,
    stats: &Stats,
) -> MrcHeader {
    // `AtomicWriter::create` checked that NX and NY fit in an i32.
    let (nx, ny) = (nx as i32, ny as i32);
    let (ispg, mz) = match kind {
        MrcKind::Volume => (1, nz),
        MrcKind::Stack => (0, 1),
    };
    let cell = |n: i32| (f64::from(n) * apix) as f32;
    MrcHeader {
        nx,
        ny,
        nz,
        mode: MrcMode::Float32,
        nxstart: 0,
        nystart: 0,
        nzstart: 0,
        mx: nx,
        my: ny,
        mz,
        cell: [cell(nx), cell(ny), cell(mz)],
        cell_angles: [90.0; 3],
        mapc: 1,
        mapr: 2,
        maps: 3,
        dmin: stats.min,
        dmax: stats.max,
        dmean: stats.mean as f32,
        ispg,
        nsymbt: 0,
        extra1: [0; 8],
        exttyp: [0; 4],
        nversion: 20140,
        extra2: [0; 84],
        origin: [0.0; 3],
        map: *b"MAP ",
        machine_stamp: [0x44, 0x44, 0, 0],
        rms: stats.rms() as f32,
        nlabl: 1,
        labels: vec![format!("multicryogan {}", env!("CARGO_PKG_VERSION"))],
        endian: Endian::Little,
    }
}

/// The 1024 bytes of `header` in its byte order; labels are padded with spaces to 80 bytes.
fn encode_header(h: &MrcHeader) -> [u8; HEADER_LEN] {
    let mut bytes = [0u8; HEADER_LEN];
    let mut put = |offset: usize, word: [u8; 4]| bytes[offset..offset + 4].copy_from_slice(&word);
    let i = |v: i32| match h.endian {
        Endian::Little => v.to_le_bytes(),
        Endian::Big => v.to_be_bytes(),
    };
    let f = |v: f32| i(v.to_bits() as i32);
    let ints = [
        (0, h.nx),
        (4, h.ny),
        (8, h.nz),
        (12, h.mode.code()),
        (16, h.nxstart),
        (20, h.nystart),
        (24, h.nzstart),
        (28, h.mx),
        (32, h.my),
        (36, h.mz),
        (64, h.mapc),
        (68, h.mapr),
        (72, h.maps),
        (88, h.ispg),
        (92, h.nsymbt),
        (108, h.nversion),
        (220, h.nlabl),
    ];
    for (offset, v) in ints {
        put(offset, i(v));
    }
    let floats = [
        (40, h.cell[0]),
        (44, h.cell[1]),
        (48, h.cell[2]),
        (52, h.cell_angles[0]),
        (56, h.cell_angles[1]),
        (60, h.cell_angles[2]),
        (76, h.dmin),
        (80, h.dmax),
        (84, h.dmean),
        (196, h.origin[0]),
        (200, h.origin[1]),
        (204, h.origin[2]),
        (216, h.rms),
    ];
    for (offset, v) in floats {
        put(offset, f(v));
    }
    put(104, h.exttyp);
    put(208, h.map);
    put(212, h.machine_stamp);
    bytes[96..104].copy_from_slice(&h.extra1);
    bytes[112..196].copy_from_slice(&h.extra2);
    for (k, label) in h.labels.iter().take(10).enumerate() {
        let slot = &mut bytes[224 + 80 * k..304 + 80 * k];
        slot.fill(b' ');
        let text = label.as_bytes();
        let n = text.len().min(80);
        slot[..n].copy_from_slice(&text[..n]);
    }
    bytes
}

impl MrcStack {
    fn check_range(&self, start: usize, n: usize) -> Result<()> {
        let len = self.len();
        match start.checked_add(n) {
            Some(end) if end <= len && (n > 0 || start <= len) => Ok(()),
            _ if n <= 1 => Err(FormatError::invalid(
                &self.path,
                "image index",
                format!("found index {start} (0-based), past the end of a stack of {len} images"),
            )),
            _ => Err(FormatError::invalid(
                &self.path,
                "image index",
                format!(
                    "found images {start}..{} (0-based), past the end of a stack of {len} images",
                    start as u128 + n as u128
                ),
            )),
        }
    }

    fn shape_error(&self, found: String, expected: String) -> FormatError {
        FormatError::invalid(
            &self.path,
            "output shape",
            format!("found an output array of shape {found}, expected {expected}"),
        )
    }

    /// Byte offset of image `index`, which `check_range` has bounded by the validated length.
    fn image_offset(&self, index: usize) -> u64 {
        let (ny, nx) = self.image_shape();
        let image_bytes = (ny * nx * self.header.mode.bytes_per_voxel()) as u64;
        self.header.data_offset() + index as u64 * image_bytes
    }

    fn read_voxels(&self, offset: u64, out: &mut [f32]) -> Result<()> {
        read_voxels(
            &self.file,
            offset,
            self.header.mode,
            self.header.endian,
            out,
        )
        .map_err(|e| FormatError::io(&self.path, "read image", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array2, Axis, s};
    use proptest::prelude::*;

    /// A header built word by word, independently of `encode_header`.
    fn raw_header(endian: Endian, dims: [i32; 3], mode: i32, stamp: [u8; 4]) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        let mut put = |offset: usize, v: i32| {
            let b = match endian {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            };
            h[offset..offset + 4].copy_from_slice(&b);
        };
        put(0, dims[0]);
        put(4, dims[1]);
        put(8, dims[2]);
        put(12, mode);
        put(28, dims[0]);
        put(32, dims[1]);
        put(36, dims[2]);
        put(40, (2.5f32 * dims[0] as f32).to_bits() as i32);
        h[212..216].copy_from_slice(&stamp);
        h
    }

    fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Values exactly representable in every mode, and their encodings.
    fn encode_values(mode: i32, endian: Endian, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for &v in values {
            let le: Vec<u8> = match mode {
                0 => vec![(v as i8) as u8],
                1 => (v as i16).to_le_bytes().to_vec(),
                2 => v.to_le_bytes().to_vec(),
                6 => (v as u16).to_le_bytes().to_vec(),
                // Half precision of small integers: exponent and mantissa by hand.
                12 => f32_to_f16_exact(v).to_le_bytes().to_vec(),
                _ => unreachable!(),
            };
            let mut word = le;
            if endian == Endian::Big {
                word.reverse();
            }
            out.extend(word);
        }
        out
    }

    /// Half-precision bits of a value exactly representable as a normal half (or zero).
    fn f32_to_f16_exact(v: f32) -> u16 {
        if v == 0.0 {
            return if v.is_sign_negative() { 0x8000 } else { 0 };
        }
        let bits = v.to_bits();
        let sign = ((bits >> 16) & 0x8000) as u16;
        let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
        let mantissa = ((bits >> 13) & 0x3ff) as u16;
        assert!(
            (1..31).contains(&exponent) && bits & 0x1fff == 0,
            "{v} is not a half"
        );
        sign | ((exponent as u16) << 10) | mantissa
    }

    #[test]
    fn a_map_with_a_non_finite_voxel_is_refused_naming_the_voxel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.mrc");
        let n = 4;
        let volume = Volume::new(ndarray::Array3::<f32>::ones((n, n, n)), 2.0).unwrap();
        write_volume(&path, &volume).unwrap();
        assert!(read_volume(&path, None).is_ok());
        // Voxel (x 1, y 2, z 3): index (3·4 + 2)·4 + 1 = 57 of the float32 data after the header.
        let mut bytes = std::fs::read(&path).unwrap();
        let extended = u32::from_le_bytes(bytes[92..96].try_into().unwrap()) as usize;
        let at = HEADER_LEN + extended + 57 * 4;
        for bad in [f32::NAN, f32::INFINITY] {
            bytes[at..at + 4].copy_from_slice(&bad.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            let err = read_volume(&path, None).unwrap_err().to_string();
            assert!(
                err.contains("map.mrc") && err.contains("(x 1, y 2, z 3)"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn every_mode_and_byte_order_reads_to_f32() {
        let dir = tempfile::tempdir().unwrap();
        // 3 columns × 2 rows × 2 sections, with values distinct along every axis.
        let values: [f32; 12] = [0., 1., -2., 3., 4., 5., 6., 7., 8., 9., 10., 11.];
        for (mode, expected) in [
            (0, values),
            (1, values.map(|v| v * -100.0)),
            (2, values.map(|v| v * 0.25 - 1.0)),
            (6, values.map(|v| v.abs() * 1000.0 + 40_000.0)),
            (12, values.map(|v| v * 0.5)),
        ] {
            for (endian, stamp) in [
                (Endian::Little, [0x44, 0x44, 0, 0]),
                (Endian::Big, [0x11, 0x11, 0, 0]),
                (Endian::Little, [0; 4]),
                (Endian::Big, [0; 4]),
                (Endian::Big, [0x44, 0x41, 0, 0]), // a lying stamp
            ] {
                let mut bytes = raw_header(endian, [3, 2, 2], mode, stamp);
                bytes.extend(encode_values(mode, endian, &expected));
                let path = write_file(dir.path(), &format!("m{mode}.mrc"), &bytes);
                let got = read(&path).unwrap();
                let case = format!("mode {mode} {endian:?} stamp {stamp:?}");
                assert_eq!(got.header.endian, endian, "{case}");
                assert_eq!(got.header.mode.code(), mode, "{case}");
                assert_eq!(got.data.dim(), (2, 2, 3), "{case}");
                assert_eq!(got.data.as_slice().unwrap(), &expected[..], "{case}");
                // x fastest: [z][y][x] = values[(z·2 + y)·3 + x].
                assert_eq!(got.data[[1, 0, 2]], expected[8], "{case}");
                assert_eq!(got.header.voxel_size(), Some(2.5), "{case}");
            }
        }
    }

    #[test]
    fn int8_is_signed() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = raw_header(Endian::Little, [4, 1, 1], 0, [0x44, 0x44, 0, 0]);
        bytes.extend([0x00, 0x7f, 0x80, 0xff]);
        let path = write_file(dir.path(), "i8.mrc", &bytes);
        let got = read(&path).unwrap();
        assert_eq!(got.data.as_slice().unwrap(), &[0.0, 127.0, -128.0, -1.0]);
    }

    #[test]
    fn half_precision_special_values() {
        let cases: [(u16, f32); 10] = [
            (0x0000, 0.0),
            (0x3c00, 1.0),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x7bff, 65504.0),
            (0x0400, 6.103_515_6e-5),
            (0x0001, 5.960_464_5e-8),
            (0x03ff, 6.097_555_e-5),
            (0x7c00, f32::INFINITY),
            (0xfc00, f32::NEG_INFINITY),
        ];
        for (bits, value) in cases {
            assert_eq!(f16_to_f32(bits), value, "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7e00).is_nan());
        assert!(f16_to_f32(0x8000).is_sign_negative() && f16_to_f32(0x8000) == 0.0);
        // Every finite positive half, in bit order, is strictly larger than the one before, and
        // negation flips the sign bit only.
        for bits in 1..0x7c00u16 {
            assert!(f16_to_f32(bits) > f16_to_f32(bits - 1), "{bits:#06x}");
            assert_eq!(f16_to_f32(bits | 0x8000), -f16_to_f32(bits));
        }
    }

    #[test]
    fn extended_header_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = raw_header(Endian::Little, [2, 1, 1], 2, [0x44, 0x44, 0, 0]);
        bytes[92..96].copy_from_slice(&8i32.to_le_bytes());
        bytes.extend([0xAA; 8]);
        bytes.extend(3.5f32.to_le_bytes());
        bytes.extend((-1.25f32).to_le_bytes());
        let path = write_file(dir.path(), "ext.mrc", &bytes);
        let got = read(&path).unwrap();
        assert_eq!(got.header.data_offset(), 1032);
        assert_eq!(got.data.as_slice().unwrap(), &[3.5, -1.25]);
    }

    #[test]
    fn voxel_size_of_sloppy_headers() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = raw_header(Endian::Little, [2, 2, 2], 2, [0; 4]);
        bytes.extend([0u8; 32]);
        let path = write_file(dir.path(), "v.mrc", &bytes);
        let mut h = read_header(&path).unwrap();
        assert_eq!(h.voxel_size(), Some(2.5));
        h.mx = 0;
        assert_eq!(h.voxel_size(), None);
        h.mx = 1;
        h.cell[0] = 1.0;
        assert_eq!(h.voxel_size(), Some(1.0));
        h.cell[0] = 0.0;
        assert_eq!(h.voxel_size(), None);
        h.cell[0] = f32::NAN;
        assert_eq!(h.voxel_size(), None);
    }

    #[test]
    fn stack_heuristics() {
        let base = output_header(4, 4, 10, 1.0, MrcKind::Stack, &Stats::new());
        assert!(base.is_stack());
        let volume = output_header(4, 4, 4, 1.0, MrcKind::Volume, &Stats::new());
        assert!(!volume.is_stack());
        let relion_style = MrcHeader {
            ispg: 1,
            mz: 1,
            ..base.clone()
        };
        assert!(relion_style.is_stack());
        let volume_stack = MrcHeader {
            ispg: 401,
            ..base.clone()
        };
        assert!(!volume_stack.is_stack());
        let sloppy_volume = MrcHeader {
            ispg: 1,
            mz: 0,
            ..base
        };
        assert!(!sloppy_volume.is_stack());
    }

    #[test]
    fn axis_permutation_is_applied_to_volumes() {
        let dir = tempfile::tempdir().unwrap();
        // Columns hold z, rows x, sections y (MAPC 3, MAPR 1, MAPS 2):
        // file[s][r][c] = V[z = c][y = s][x = r].
        let n = 4;
        let volume = Array3::from_shape_fn((n, n, n), |(z, y, x)| (100 * z + 10 * y + x) as f32);
        let file_order = Array3::from_shape_fn((n, n, n), |(s, r, c)| volume[[c, s, r]]);
        let mut bytes = raw_header(Endian::Little, [4, 4, 4], 2, [0x44, 0x44, 0, 0]);
        for (offset, v) in [(64, 3i32), (68, 1), (72, 2)] {
            bytes[offset..offset + 4].copy_from_slice(&v.to_le_bytes());
        }
        for v in file_order.iter() {
            bytes.extend(v.to_le_bytes());
        }
        let path = write_file(dir.path(), "perm.mrc", &bytes);
        let got = read_volume(&path, None).unwrap();
        assert_eq!(got.data(), &volume);
        assert_eq!(got.apix(), 2.5);
    }

    #[test]
    fn header_encoding_round_trips() {
        let mut stats = Stats::new();
        stats.push(&[1.0, 2.0, 4.0]);
        for endian in [Endian::Little, Endian::Big] {
            let header = MrcHeader {
                endian,
                nsymbt: 0,
                origin: [1.0, -2.0, 3.5],
                ..output_header(6, 8, 3, 1.5, MrcKind::Stack, &stats)
            };
            let bytes = encode_header(&header);
            let len = HEADER_LEN as u64 + 6 * 8 * 3 * 4;
            let parsed = parse_header(&bytes, len, Path::new("x.mrcs")).unwrap();
            assert_eq!(parsed, header);
        }
        assert!((stats.rms() - (14.0f64 / 9.0).sqrt()).abs() < 1e-15);
    }

    #[test]
    fn streamed_statistics_equal_two_pass() {
        let values: Vec<f32> = (0..10_007)
            .map(|i| 1e4 + ((i * 7919) % 1013) as f32 * 0.01)
            .collect();
        let mut stats = Stats::new();
        for chunk in values.chunks(333) {
            stats.push(chunk);
        }
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!((stats.mean - mean).abs() <= 1e-12 * mean.abs());
        assert!((stats.rms() - var.sqrt()).abs() <= 1e-9 * var.sqrt());
        assert_eq!(
            stats.min,
            values.iter().copied().fold(f32::INFINITY, f32::min)
        );
        assert_eq!(
            stats.max,
            values.iter().copied().fold(f32::NEG_INFINITY, f32::max)
        );
    }

    #[test]
    fn stack_reads_match_whole_file_and_views() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.mrcs");
        let data = Array3::from_shape_fn((7, 3, 5), |(i, y, x)| (i * 100 + y * 10 + x) as f32);
        let mut w = MrcStackWriter::create(&path, 3, 5, 1.5).unwrap();
        w.append(data.slice(s![..4, .., ..])).unwrap();
        // A non-contiguous view appends in logical order too.
        let transposed = data
            .slice(s![4.., .., ..])
            .permuted_axes([0, 2, 1])
            .as_standard_layout()
            .into_owned();
        let view = transposed.view().permuted_axes([0, 2, 1]);
        assert!(view.as_slice().is_none());
        w.append(view).unwrap();
        assert_eq!(w.len(), 7);
        w.finish().unwrap();
        let stack = MrcStack::open(&path).unwrap();
        assert_eq!((stack.len(), stack.image_shape()), (7, (3, 5)));
        let mut image = Array2::zeros((3, 5));
        stack.read_into(6, image.view_mut()).unwrap();
        assert_eq!(image, data.index_axis(Axis(0), 6));
        // Into a transposed (non-standard) view.
        let mut t = Array2::zeros((5, 3));
        stack.read_into(2, t.view_mut().reversed_axes()).unwrap();
        assert_eq!(t.t(), data.index_axis(Axis(0), 2));
        let mut range = Array3::zeros((3, 3, 5));
        stack.read_range(4, range.view_mut()).unwrap();
        assert_eq!(range, data.slice(s![4..7, .., ..]));
        let err = stack
            .read_range(5, range.view_mut())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.mrcs") && err.contains("5..8") && err.contains("7 images"),
            "{err}"
        );
        let err = stack
            .read_into(0, Array2::zeros((5, 3)).view_mut())
            .unwrap_err();
        assert!(err.to_string().contains("output shape"), "{err}");
    }

    #[test]
    fn unfinished_or_empty_writers_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mrcs");
        {
            let mut w = MrcStackWriter::create(&path, 2, 2, 1.0).unwrap();
            w.append(Array3::zeros((3, 2, 2)).view()).unwrap();
            assert!(!path.exists(), "nothing under the final name before finish");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let w = MrcStackWriter::create(&path, 2, 2, 1.0).unwrap();
        let err = w.finish().unwrap_err().to_string();
        assert!(err.contains("NZ"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut w = MrcStackWriter::create(&path, 2, 2, 1.0).unwrap();
        let err = w
            .append(Array3::zeros((1, 2, 3)).view())
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.mrcs") && err.contains("2×3"), "{err}");
        assert!(MrcStackWriter::create(&path, 2, 2, 0.0).is_err());
        assert!(MrcStackWriter::create(&path, 0, 2, 1.0).is_err());
    }

    #[test]
    fn stack_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MrcStack>();
        check::<MrcStackWriter>();
    }

    /// A valid little- or big-endian file of every mode, for mutation.
    fn valid_file() -> impl Strategy<Value = Vec<u8>> {
        (
            prop::sample::select(vec![0, 1, 2, 6, 12]),
            any::<bool>(),
            1i32..5,
            1i32..5,
            1i32..4,
            0i32..9,
            any::<bool>(),
        )
            .prop_map(|(mode, big, nx, ny, nz, nsymbt, stamp)| {
                let endian = if big { Endian::Big } else { Endian::Little };
                let stamp = match (stamp, big) {
                    (false, _) => [0; 4],
                    (true, false) => [0x44, 0x44, 0, 0],
                    (true, true) => [0x11, 0x11, 0, 0],
                };
                let mut bytes = raw_header(endian, [nx, ny, nz], mode, stamp);
                let nsymbt_word = match endian {
                    Endian::Little => nsymbt.to_le_bytes(),
                    Endian::Big => nsymbt.to_be_bytes(),
                };
                bytes[92..96].copy_from_slice(&nsymbt_word);
                let bpv = MrcMode::from_code(mode).unwrap().bytes_per_voxel();
                let len = nsymbt as usize + (nx * ny * nz) as usize * bpv;
                bytes.extend((0..len).map(|i| (i * 37 % 251) as u8));
                bytes
            })
    }

    /// A valid file with header words overwritten and the end cut or extended.
    fn mutated_file() -> impl Strategy<Value = Vec<u8>> {
        (
            valid_file(),
            prop::collection::vec((0usize..256, any::<i32>()), 0..4),
            prop::collection::vec(
                (
                    0usize..256,
                    prop::sample::select(vec![-1, 0, 1, 2, 3, 4, 12, 101, i32::MAX, i32::MIN]),
                ),
                0..3,
            ),
            prop_oneof![Just(None), (0usize..2000).prop_map(Some)],
            0usize..3,
        )
            .prop_map(|(mut bytes, random, small, cut, grow)| {
                for (word, v) in random.into_iter().chain(small) {
                    let at = word * 4;
                    if at + 4 <= bytes.len() {
                        let le = bytes[212] != 0x11;
                        let b = if le { v.to_le_bytes() } else { v.to_be_bytes() };
                        bytes[at..at + 4].copy_from_slice(&b);
                    }
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.min(bytes.len()));
                }
                bytes.extend(std::iter::repeat_n(7u8, grow));
                bytes
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn reading_any_bytes_never_panics(bytes in mutated_file()) {
            let path = Path::new("fuzz.mrc");
            let (result, largest) = mcg_testdata::alloc::measured(|| {
                read_from(&bytes[..], bytes.len() as u64, path)
            });
            // Never a buffer sized by a header that the file does not back.
            prop_assert!(largest <= mcg_testdata::alloc::bound(bytes.len()), "{largest} bytes");
            match result {
                Ok(got) => {
                    // Whatever is accepted is consistent with its header and the file length.
                    let h = &got.header;
                    prop_assert_eq!(got.data.dim(), h.shape());
                    let n = got.data.len() * h.mode.bytes_per_voxel();
                    prop_assert_eq!(h.data_offset() + n as u64, bytes.len() as u64);
                }
                Err(e) => prop_assert!(e.to_string().contains("fuzz.mrc")),
            }
        }

        #[test]
        fn reading_random_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1200)) {
            let result = read_from(&bytes[..], bytes.len() as u64, Path::new("noise.mrc"));
            if let Err(e) = result {
                prop_assert!(e.to_string().contains("noise.mrc"));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn opening_mutated_stacks_never_panics(bytes in mutated_file(), index in 0usize..6) {
            let dir = tempfile::tempdir().unwrap();
            let path = write_file(dir.path(), "fuzz.mrcs", &bytes);
            let (opened, largest) = mcg_testdata::alloc::measured(|| MrcStack::open(&path));
            prop_assert!(largest <= mcg_testdata::alloc::bound(bytes.len()), "{largest} bytes");
            if let Ok(stack) = opened {
                let (ny, nx) = stack.image_shape();
                let result = stack.read_into(index, Array2::zeros((ny, nx)).view_mut());
                prop_assert_eq!(result.is_ok(), index < stack.len());
            }
        }
    }
}
