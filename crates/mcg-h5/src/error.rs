//! The error type of the HDF5 container: every error names the file and the object at fault.

use std::path::{Path, PathBuf};

use mcg_formats::FormatError;

/// What went wrong reading or writing a particle file. Every variant names the file; the HDF5
/// and content variants also name the object (a dataset such as `/particles/rot`, or an
/// attribute such as ``/ attribute `format` ``).
#[derive(Debug, thiserror::Error)]
pub enum H5Error {
    /// The operating system refused an operation on the file (create, rename, read pixels).
    #[error("{path}: {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done, for example "rename into place".
        op: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The HDF5 library failed on `object` during `op`.
    #[error("{path}: {object}: {op}: {source}")]
    Hdf5 {
        /// The file.
        path: PathBuf,
        /// The dataset, group or attribute, as an HDF5 path.
        object: String,
        /// What was being done, for example "read" or "create dataset".
        op: &'static str,
        /// The library's error.
        #[source]
        source: hdf5::Error,
    },
    /// The file, or the data handed to the writer, breaks the container's layout: `problem`
    /// says what was found and what was expected.
    #[error("{path}: {object}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dataset, group or attribute at fault.
        object: String,
        /// What was found and what was expected.
        problem: String,
    },
    /// The image source failed while its images were being copied into `path`.
    #[error("{path}: reading the images to store: {source}")]
    Source {
        /// The file being written.
        path: PathBuf,
        /// The source's error, which names its own file.
        #[source]
        source: FormatError,
    },
}

/// Result with [`H5Error`].
pub type Result<T, E = H5Error> = std::result::Result<T, E>;

impl From<H5Error> for FormatError {
    /// Folds the error into the formats crate's type, so that [`crate::H5Particles`] can serve
    /// as an [`mcg_formats::ImageSource`]: HDF5 failures become
    /// [`FormatError::Invalid`] with the object as the field and the operation and library
    /// message as the problem.
    fn from(e: H5Error) -> Self {
        match e {
            H5Error::Io { path, op, source } => FormatError::Io { path, op, source },
            H5Error::Hdf5 {
                path,
                object,
                op,
                source,
            } => FormatError::Invalid {
                path,
                field: object,
                problem: format!("{op}: {source}"),
            },
            H5Error::Invalid {
                path,
                object,
                problem,
            } => FormatError::Invalid {
                path,
                field: object,
                problem,
            },
            H5Error::Source { source, .. } => source,
        }
    }
}

impl H5Error {
    /// A content error in `path` at `object`.
    pub(crate) fn invalid(
        path: &Path,
        object: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            object: object.into(),
            problem: problem.into(),
        }
    }

    /// An I/O error on `path` during `op`.
    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            op,
            source,
        }
    }
}

/// Attaches the file, the object and the operation to an HDF5 result.
pub(crate) trait Context<T> {
    /// Maps an HDF5 error to [`H5Error::Hdf5`] naming `path`, `object` and `op`.
    fn at(self, path: &Path, object: &str, op: &'static str) -> Result<T>;
}

impl<T> Context<T> for hdf5::Result<T> {
    fn at(self, path: &Path, object: &str, op: &'static str) -> Result<T> {
        self.map_err(|source| H5Error::Hdf5 {
            path: path.to_path_buf(),
            object: object.to_owned(),
            op,
            source,
        })
    }
}

impl From<mcg_fsio::FsError> for H5Error {
    fn from(e: mcg_fsio::FsError) -> Self {
        Self::Io {
            path: e.path,
            op: e.action,
            source: e.source,
        }
    }
}
