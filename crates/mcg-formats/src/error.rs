//! The one error type of the formats crate.

use std::path::PathBuf;

/// What went wrong reading or writing a file: always names the file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The operating system refused an operation on the file.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The file's content breaks its format; `field` names the header word, STAR label or
    /// column at fault and `problem` what was found and what was expected.
    #[error("{path}: {field}: {problem}")]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
}

impl FormatError {
    /// An I/O error on `path` during `op` (for example "open", "read header").
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            op,
            source,
        }
    }

    /// A content error in `path` at `field`.
    pub fn invalid(
        path: impl Into<PathBuf>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            path: path.into(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Result with [`FormatError`].
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

impl From<mcg_fsio::FsError> for FormatError {
    fn from(e: mcg_fsio::FsError) -> Self {
        Self::io(e.path, e.action, e.source)
    }
}
