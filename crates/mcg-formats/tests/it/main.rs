//! Integration tests of the formats crate, one module per format. Files written by other
//! programs are read in place from `../shared/data` (see [`shared`]).

mod cs_interop;
mod mrc_interop;
mod star_interop;

use std::path::PathBuf;

/// The path of a file under the project's sibling `shared/data/` folder, or `None` when that
/// folder is absent (a user's fresh clone). On CI (`CI` set) a missing folder fails the test,
/// unless `MCG_ALLOW_MISSING_SHARED` is set (a public CI without the reference files).
pub fn shared(rel: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if root.is_dir() {
        Some(root.join(rel))
    } else if std::env::var_os("CI").is_some()
        && std::env::var_os("MCG_ALLOW_MISSING_SHARED").is_none()
    {
        panic!("CI must have ../shared/data beside the repository ({})", root.display());
    } else {
        eprintln!("skipping: ../shared/data is not beside this clone");
        None
    }
}
