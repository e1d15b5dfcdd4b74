//! Small helpers for running commands from xtask.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target folder: `$CARGO_TARGET_DIR` (a relative one is taken from the workspace root,
/// where xtask runs cargo), else `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// Runs `cargo ARGS` in the workspace root, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Path::new(&cargo), args)
}

/// Runs `program ARGS` in the workspace root with inherited output, failing on a non-zero exit.
pub fn run(program: &Path, args: &[&str]) -> Result<()> {
    eprintln!("xtask: {} {}", program.display(), args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("could not start {}", program.display()))?;
    if !status.success() {
        bail!("{} {} failed ({status})", program.display(), args.join(" "));
    }
    Ok(())
}

/// Runs an installer step quietly: one line saying `what`, its own output only when it fails
/// (then in full, with the command).
pub fn run_quiet(what: &str, program: &Path, args: &[&str]) -> Result<()> {
    eprintln!("xtask setup: {what}");
    let out = Command::new(program)
        .args(args)
        .current_dir(root())
        .output()
        .with_context(|| format!("could not start {}", program.display()))?;
    if !out.status.success() {
        eprintln!("xtask: {} {}", program.display(), args.join(" "));
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!(
            "{what}: {} {} failed ({})",
            program.display(),
            args.join(" "),
            out.status
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file beside it and a rename, so that `path` is
/// never left half-written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(mcg_fsio::write_atomic(path, bytes)?)
}

/// Runs a command and returns its standard output, or `None` when it cannot run or fails.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Test counts summed over `cargo test`'s `test result:` lines.
#[derive(Debug, Default, Clone, Copy)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl TestCounts {
    pub fn add(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    /// Adds the counts of one `test result: ok. 5 passed; 0 failed; 1 ignored; …` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs `cargo ARGS` (a `cargo test`), passing its output through and counting its tests. A
/// failing run is an error.
pub fn cargo_test(args: &[&str]) -> Result<TestCounts> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: {cargo} {}", args.join(" "));
    let mut child = Command::new(&cargo)
        .args(args)
        .current_dir(root())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {cargo}"))?;
    let mut counts = TestCounts::default();
    let stdout = child.stdout.take().expect("piped");
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        counts.add_line(&line);
        writeln!(out, "{line}")?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cargo} {} failed ({status})", args.join(" "));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::TestCounts;

    #[test]
    fn counts_cargo_test_summaries() {
        let mut c = TestCounts::default();
        c.add_line("test result: ok. 59 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.46s");
        c.add_line(
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        c.add_line("running 4 tests");
        assert_eq!((c.passed, c.failed, c.ignored), (62, 1, 2));
    }
}
