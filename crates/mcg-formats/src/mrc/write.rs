//! Writing float32 files under a temporary name, with running statistics for the header.

use super::*;

/// Running minimum, maximum, mean and sum of squared deviations (Chan et al.'s pairwise
/// update), in f64, so that streamed statistics equal a two-pass computation to rounding.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stats {
    pub(super) n: u64,
    pub(super) mean: f64,
    pub(super) m2: f64,
    pub(super) min: f32,
    pub(super) max: f32,
}

impl Stats {
    pub(super) fn new() -> Self {
        Self {
            n: 0,
            mean: 0.0,
            m2: 0.0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }

    pub(super) fn push(&mut self, values: &[f32]) {
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
    pub(super) fn rms(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.m2 / self.n as f64).sqrt()
        }
    }
}

/// A float32 MRC file being written under a temporary name; see [`MrcStackWriter`].
#[derive(Debug)]
pub(super) struct AtomicWriter {
    pub(super) dest: PathBuf,
    pub(super) out: Option<BufWriter<File>>,
    /// Declared after `out`, so that the file is closed before an unfinished one is removed.
    pub(super) staged: Option<mcg_fsio::Staged>,
    pub(super) ny: usize,
    pub(super) nx: usize,
    pub(super) apix: f64,
    pub(super) kind: MrcKind,
    pub(super) sections: usize,
    pub(super) stats: Stats,
    pub(super) scratch: Vec<u8>,
}

impl AtomicWriter {
    pub(super) fn create(
        dest: &Path,
        ny: usize,
        nx: usize,
        apix: f64,
        kind: MrcKind,
    ) -> Result<Self> {
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

    pub(super) fn append(&mut self, images: ArrayView3<'_, f32>) -> Result<()> {
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

    pub(super) fn finish(mut self) -> Result<()> {
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
    pub(super) fn tmp(&self) -> &Path {
        self.staged
            .as_ref()
            .map_or(self.dest.as_path(), |s| s.path())
    }
}
