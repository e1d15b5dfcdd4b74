//! Test support: where the reference files of other programs live, and running the
//! `multicryogan` binary as a user does ([`cli`]).
//!
//! They sit beside the repository in `../shared/data` and are never copied into it. CI has
//! them; a user's fresh clone does not, so tests that need them skip with a message there.

use std::path::PathBuf;

pub mod alloc;

/// The paper's training recipe (`train --config`), small enough for seconds on two cores: a
/// 16³ box, a latent cube of 8, 4 channels, batches of 8.
pub const SMALL_PAPER_RECIPE: &str = r#"{
  "model": { "mode": "multi", "box_size": 16, "latent_size": 8, "latent_scale": 0.025,
             "generator_channels": 4, "discriminator_channels": 4, "spherical_mask": true,
             "generator": "cnn", "leaky_slope": 0.01, "pack": 1 },
  "batch_size": 8, "poses_per_volume": 4, "d_steps": 2, "seed": 5, "step": "paper",
  "lr_d": 1e-4, "warm_steps": 0, "blur_start_px": 0.0
}"#;

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

/// Running a command-line program from a test: the `multicryogan` binary, whose path the test
/// gets from `env!("CARGO_BIN_EXE_multicryogan")`.
pub mod cli {
    use std::path::Path;
    use std::process::{Command, Output};

    /// `path` as `&str`, for an argument list.
    pub fn s(path: &Path) -> &str {
        path.to_str().expect("utf-8 path")
    }

    /// Width and height of a PNG file, from its header; fails the test on a file that is not
    /// a PNG.
    pub fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            bytes.len() >= 24 && &bytes[1..4] == b"PNG",
            "{} is not a PNG",
            path.display()
        );
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        (be(16), be(20))
    }

    /// Runs `bin ARGS` without colour and without the user's structures folder, returning its
    /// output.
    pub fn run(bin: &str, args: &[&str]) -> Output {
        Command::new(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("MULTICRYOGAN_STRUCTURES")
            .output()
            .unwrap_or_else(|e| panic!("{bin} does not run: {e}"))
    }

    /// Runs `bin ARGS` and fails the test, showing stderr, unless it succeeds; returns stdout.
    pub fn ok(bin: &str, args: &[&str]) -> String {
        let out = run(bin, args);
        assert!(
            out.status.success(),
            "multicryogan {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `bin ARGS` expecting failure; returns stderr.
    pub fn fails(bin: &str, args: &[&str]) -> String {
        let out = run(bin, args);
        assert!(
            !out.status.success(),
            "multicryogan {} should have failed",
            args.join(" ")
        );
        String::from_utf8(out.stderr).expect("utf-8 stderr")
    }
}
