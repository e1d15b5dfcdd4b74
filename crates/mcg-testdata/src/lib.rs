//! Test support: where the reference files of other programs live.
//!
//! They sit beside the repository in `../shared/data` and are never copied into it. CI has
//! them; a user's fresh clone does not, so tests that need them skip with a message there.

use std::path::PathBuf;

/// The path of `rel` under `../shared/data/`, or `None` when that folder is absent (a user's
/// fresh clone). On CI (`CI` set) a missing folder fails the test, unless
/// `MCG_ALLOW_MISSING_SHARED` is set (a public CI without the reference files).
pub fn shared(rel: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if root.is_dir() {
        Some(root.join(rel))
    } else if std::env::var_os("CI").is_some()
        && std::env::var_os("MCG_ALLOW_MISSING_SHARED").is_none()
    {
        panic!(
            "CI must have ../shared/data beside the repository ({})",
            root.display()
        );
    } else {
        eprintln!("skipping: ../shared/data is not beside this clone");
        None
    }
}
