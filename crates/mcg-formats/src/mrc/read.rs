//! Reading voxels: positioned reads, decoding every mode and byte order, axis order, and the lazy stack's helpers.

use super::*;

pub(super) fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(|e| FormatError::io(path, "stat", e))
}

/// Positioned reads from a file or a byte buffer, so that one reader serves both the file
/// readers and the in-memory tests, and a shared `&File` reads from many threads.
pub(super) trait ReadAt {
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
pub(super) fn header_from<S: ReadAt + ?Sized>(src: &S, len: u64, path: &Path) -> Result<MrcHeader> {
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
pub(super) fn read_from<S: ReadAt + ?Sized>(src: &S, len: u64, path: &Path) -> Result<MrcData> {
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
pub(super) fn read_voxels<S: ReadAt + ?Sized>(
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
pub(super) fn decode(mode: MrcMode, endian: Endian, bytes: &[u8], out: &mut [f32]) {
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

pub(super) fn map_words<const N: usize>(bytes: &[u8], out: &mut [f32], f: impl Fn([u8; N]) -> f32) {
    let (words, _) = bytes.as_chunks::<N>();
    for (o, &w) in out.iter_mut().zip(words) {
        *o = f(w);
    }
}

/// Puts the axes of `data`, stored `[sections][rows][columns]`, in `[z][y][x]` order following
/// MAPC/MAPR/MAPS; a header whose words are not a permutation of 1, 2, 3 (sloppy writers leave
/// zeros) is taken as already in order.
pub(super) fn to_xyz_order(data: Array3<f32>, header: &MrcHeader, path: &Path) -> Array3<f32> {
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

impl MrcStack {
    pub(super) fn check_range(&self, start: usize, n: usize) -> Result<()> {
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

    pub(super) fn shape_error(&self, found: String, expected: String) -> FormatError {
        FormatError::invalid(
            &self.path,
            "output shape",
            format!("found an output array of shape {found}, expected {expected}"),
        )
    }

    /// Byte offset of image `index`, which `check_range` has bounded by the validated length.
    pub(super) fn image_offset(&self, index: usize) -> u64 {
        let (ny, nx) = self.image_shape();
        let image_bytes = (ny * nx * self.header.mode.bytes_per_voxel()) as u64;
        self.header.data_offset() + index as u64 * image_bytes
    }

    pub(super) fn read_voxels(&self, offset: u64, out: &mut [f32]) -> Result<()> {
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
