//! The MRC2014 header: byte-order detection, parsing and checking its words, and encoding the header of the files we write.

use super::*;

/// MODE words of the MRC2014 standard, readable or not, for byte-order detection.
pub(super) const KNOWN_MODES: [i32; 8] = [0, 1, 2, 3, 4, 6, 12, 101];

/// A reader of the header's 4-byte words in one byte order.
#[derive(Clone, Copy)]
pub(super) struct Words<'a> {
    pub(super) bytes: &'a [u8; HEADER_LEN],
    pub(super) endian: Endian,
}

impl Words<'_> {
    pub(super) fn raw(&self, offset: usize) -> [u8; 4] {
        let mut w = [0u8; 4];
        w.copy_from_slice(&self.bytes[offset..offset + 4]);
        w
    }

    pub(super) fn i32(&self, offset: usize) -> i32 {
        match self.endian {
            Endian::Little => i32::from_le_bytes(self.raw(offset)),
            Endian::Big => i32::from_be_bytes(self.raw(offset)),
        }
    }

    pub(super) fn f32(&self, offset: usize) -> f32 {
        f32::from_bits(self.i32(offset) as u32)
    }

    pub(super) fn f32x3(&self, offset: usize) -> [f32; 3] {
        [self.f32(offset), self.f32(offset + 4), self.f32(offset + 8)]
    }

    /// NX, NY, NZ, MODE and NSYMBT: the words that size the file.
    pub(super) fn layout(&self) -> Layout {
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
pub(super) struct Layout {
    pub(super) nx: i32,
    pub(super) ny: i32,
    pub(super) nz: i32,
    pub(super) mode: i32,
    pub(super) nsymbt: i32,
}

impl Layout {
    /// Whether the words make sense in this byte order (whatever the file length).
    pub(super) fn plausible(&self) -> bool {
        self.nx > 0
            && self.ny > 0
            && self.nz > 0
            && self.nsymbt >= 0
            && KNOWN_MODES.contains(&self.mode)
    }

    /// The file length the header announces, when the words are valid and it fits in a u64.
    pub(super) fn expected_len(&self) -> Option<u64> {
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

    pub(super) fn fits(&self, file_len: u64) -> bool {
        self.plausible() && self.expected_len() == Some(file_len)
    }
}

/// The byte order of a header: the machine stamp's when the words make sense in it; else the
/// order in which the words make sense and match the file length; else the one in which they
/// make sense; else the stamp's or little-endian (and validation then reports the bad word).
pub(super) fn detect_endian(bytes: &[u8; HEADER_LEN], file_len: u64) -> Endian {
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
pub(super) fn parse_header(
    bytes: &[u8; HEADER_LEN],
    file_len: u64,
    path: &Path,
) -> Result<MrcHeader> {
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

pub(super) fn mode_name(mode: i32) -> &'static str {
    match mode {
        3 => " (complex int16, not supported)",
        4 => " (complex float32, not supported)",
        101 => " (4-bit, not supported)",
        _ => "",
    }
}

/// The header of a float32 file we write.
pub(super) fn output_header(
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
pub(super) fn encode_header(h: &MrcHeader) -> [u8; HEADER_LEN] {
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
