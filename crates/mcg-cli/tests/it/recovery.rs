//! Interrupted, killed and failed commands: nothing half-written, nothing stray, options checked
//! before anything is written, and a rerun that gives the files of an uninterrupted run, bit for
//! bit (issue 13, class 2).

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{fails, ok, s};

/// A synth whose stack takes a few seconds (one thread, small batches) after a short ground
/// truth (two maps).
const SYNTH: [&str; 16] = [
    "synth",
    "--preset",
    "hsp90-continuous",
    "--n",
    "20000",
    "--box",
    "24",
    "--states",
    "2",
    "--calibration-images",
    "100",
    "--threads",
    "1",
    "--batch",
    "16",
    "-q",
];

/// The binary, run in `dir` (so that the relative paths it records are the same in every
/// folder of a test).
fn multicryogan(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_multicryogan"));
    c.current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("MULTICRYOGAN_STRUCTURES");
    c
}

/// Every file below `root` with its bytes, by relative path; `manifest.json` (which records
/// the wall time) is left out.
pub fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.file_name().unwrap() != "manifest.json" {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The temporary files of the workspace's one scheme below `root`.
pub fn temporaries(root: &Path) -> Vec<PathBuf> {
    tree_names(root)
        .into_iter()
        .filter(|p| mcg_fsio::is_temporary(&p.file_name().unwrap().to_string_lossy()))
        .collect()
}

fn tree_names(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(tree_names(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Starts `command`, waits until a temporary file whose name ends with `suffix` appears in
/// `watch` (the command is writing it), then sends it `signal`; returns its output.
pub fn signal_while_writing(
    mut command: Command,
    watch: &Path,
    suffix: &str,
    signal: &str,
) -> Output {
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while !temporaries(watch)
        .iter()
        .any(|p| p.to_string_lossy().ends_with(suffix))
    {
        if start.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!(
                "no temporary {suffix} appeared in {} while the command ran",
                watch.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(50));
    let sent = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait_with_output().unwrap()
}

/// SIGKILL (no chance to clean up) and SIGTERM (cleaned up on the way out) in the middle of
/// the stack; the same command run again removes what the killed process left and gives the
/// files of an uninterrupted run, bit for bit, with no stray file.
#[test]
fn synth_killed_or_terminated_then_rerun_gives_the_uninterrupted_files() {
    let dir = tempfile::tempdir().unwrap();
    let args = [&SYNTH[..], &["--out", "out"]].concat();
    let reference = dir.path().join("reference");
    std::fs::create_dir(&reference).unwrap();
    let status = multicryogan(&reference, &args).status().unwrap();
    assert!(status.success());
    let want = tree(&reference.join("out"));
    assert!(want.iter().any(|(p, _)| p == Path::new("particles.mrcs")));

    for signal in ["KILL", "TERM"] {
        let here = dir.path().join(signal);
        std::fs::create_dir(&here).unwrap();
        let out = here.join("out");
        let stopped =
            signal_while_writing(multicryogan(&here, &args), &out, ".particles.mrcs", signal);
        assert!(!stopped.status.success(), "SIG{signal}");
        let left = temporaries(&out);
        if signal == "KILL" {
            assert_eq!(stopped.status.signal(), Some(9));
            assert!(
                !left.is_empty(),
                "a killed process leaves its temporary files"
            );
        } else {
            assert_eq!(stopped.status.code(), Some(130));
            assert!(left.is_empty(), "SIGTERM left {left:?}");
        }
        assert!(
            !out.join("particles.mrcs").exists(),
            "SIG{signal}: a partial stack"
        );
        assert!(
            !out.join("manifest.json").exists(),
            "SIG{signal}: a manifest"
        );

        let rerun = multicryogan(&here, &args).output().unwrap();
        assert!(
            rerun.status.success(),
            "{}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        if signal == "KILL" {
            let stderr = String::from_utf8_lossy(&rerun.stderr);
            assert!(stderr.contains("no longer runs"), "{stderr}");
        }
        assert_eq!(temporaries(&out), Vec::<PathBuf>::new(), "SIG{signal}");
        let got = tree(&out);
        let names = |t: &[(PathBuf, Vec<u8>)]| t.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
        assert_eq!(names(&got), names(&want), "SIG{signal}");
        for ((path, a), (_, b)) in got.iter().zip(&want) {
            assert!(
                a == b,
                "SIG{signal}: {} differs from the uninterrupted run's",
                path.display()
            );
        }
    }
}

/// A bad --shard is refused before the output folder is made.
#[test]
fn synth_checks_its_options_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    for shard in ["0/3", "4/3", "x"] {
        let out = dir.path().join("o");
        let msg = fails(&[&SYNTH[..], &["--out", s(&out), "--shard", shard]].concat());
        assert!(msg.contains("--shard"), "{msg}");
        assert!(!out.exists(), "--shard {shard}: the output folder was made");
    }
    let out = dir.path().join("o");
    let msg = fails(&[&SYNTH[..], &["--out", s(&out), "--shards", "0"]].concat());
    assert!(msg.contains("--shards"), "{msg}");
    assert!(!out.exists());
}

/// A rerun with fewer --states leaves only its own ground-truth maps.
#[test]
fn a_rerun_with_fewer_states_removes_the_earlier_maps() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let maps = |out: &Path| {
        let mut m: Vec<String> = std::fs::read_dir(out.join("ground_truth"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        m.sort();
        m
    };
    let small = [
        "synth",
        "--preset",
        "hsp90-continuous",
        "--n",
        "20",
        "--calibration-images",
        "10",
        "-q",
        "--no-h5",
    ];
    ok(&[&small[..], &["--out", s(&out), "--states", "5"]].concat());
    assert_eq!(maps(&out).len(), 6, "{:?}", maps(&out));
    ok(&[&small[..], &["--out", s(&out), "--states", "3"]].concat());
    assert_eq!(
        maps(&out),
        ["beta_00.mrc", "beta_10.mrc", "beta_20.mrc", "states.json"],
        "the maps of the earlier run stayed"
    );
    // A map the user put there is not the earlier run's and stays.
    std::fs::write(out.join("ground_truth/mine.mrc"), "x").unwrap();
    ok(&[&small[..], &["--out", s(&out), "--states", "2"]].concat());
    assert_eq!(
        maps(&out),
        ["beta_00.mrc", "beta_20.mrc", "mine.mrc", "states.json"]
    );
}

/// merge-shards checks every shard's stack before writing: a truncated one is named and the
/// merged files are not made.
#[test]
fn merging_a_truncated_shard_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let small = [
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        "40",
        "--calibration-images",
        "10",
        "-q",
    ];
    for k in ["1/2", "2/2"] {
        ok(&[&small[..], &["--out", s(&out), "--shard", k]].concat());
    }
    let stack = out.join("shards/2-of-2/particles.mrcs");
    let bytes = std::fs::read(&stack).unwrap();
    std::fs::write(&stack, &bytes[..bytes.len() - 100]).unwrap();
    let msg = fails(&["merge-shards", s(&out)]);
    assert!(
        msg.contains("2-of-2") && msg.contains("particles.mrcs"),
        "{msg}"
    );
    for f in ["particles.star", "particles.h5", "manifest.json"] {
        assert!(!out.join(f).exists(), "{f} was written");
    }
    assert_eq!(temporaries(&out), Vec::<PathBuf>::new());
}

/// A landscape file is never overwritten by the data set made from it.
#[test]
fn synth_never_overwrites_its_landscape_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    std::fs::create_dir(&out).unwrap();
    let landscape = out.join("landscape.json");
    std::fs::write(&landscape, "{\"mine\": true}").unwrap();
    let msg = fails(&["synth", "--landscape", s(&landscape), "--out", s(&out)]);
    assert!(msg.contains("would overwrite the input"), "{msg}");
    assert_eq!(
        std::fs::read_to_string(&landscape).unwrap(),
        "{\"mine\": true}"
    );
}
