//! `multicryogan validate`: two runs compared as gold-standard half sets.

use serde_json::Value;

use crate::report::small_run;
use crate::train::tiny_set_of;
use crate::{fails, ok, s};

#[test]
fn validate_writes_its_files_and_refuses_bad_runs() {
    let dir = tempfile::tempdir().unwrap();
    let star = tiny_set_of(dir.path(), "hsp90-continuous");
    let run = small_run(dir.path(), &star);

    // A run against itself, or against a copy recorded as trained on the same particles, is
    // refused naming the run: every FSC would reach Nyquist.
    let refused = dir.path().join("refused");
    let msg = fails(&[
        "validate",
        s(&run),
        s(&run),
        "--out",
        s(&refused),
        "--device",
        "cpu",
    ]);
    assert!(
        msg.contains(&format!("{}: the run compared with itself", run.display())),
        "{msg}"
    );
    let copy = copy_as_half(&run, &dir.path().join("copy"), None);
    let msg = fails(&[
        "validate",
        s(&run),
        s(&copy),
        "--out",
        s(&refused),
        "--device",
        "cpu",
    ]);
    assert!(
        msg.contains(&format!(
            "{}: trained on the same particles as {}",
            copy.display(),
            run.display()
        )),
        "{msg}"
    );
    assert!(!refused.exists());

    // The run against a copy recorded as the other half: every matched point at Nyquist, the
    // files written.
    let run = copy_as_half(&run, &dir.path().join("half1"), Some(1));
    let copy = copy_as_half(&run, &dir.path().join("half2"), Some(2));
    let out = dir.path().join("validation");
    let printed = ok(&[
        "validate",
        s(&run),
        s(&copy),
        "--out",
        s(&out),
        "--l",
        "4",
        "--device",
        "cpu",
        "-q",
    ]);
    assert!(
        printed.starts_with("Half-set FSC (B aligned onto A)"),
        "{printed}"
    );
    assert!(printed.contains("Nyquist (20.0 Å) or better"), "{printed}");
    assert!(printed.contains("validation.html"), "{printed}");
    for name in mcg_report::validate::OUTPUTS {
        assert!(out.join(name).is_file(), "{name}");
    }
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("validation.json")).unwrap())
            .unwrap();
    assert_eq!(v["landscape"], "continuous");
    assert_eq!(v["points"].as_array().unwrap().len(), 5);
    assert_eq!(v["resolution"]["median_nyquist_fraction"], 1.0);
    assert_eq!(v["probabilities"]["max_abs_difference"], 0.0);

    // --json prints validation.json.
    let json = ok(&[
        "validate",
        s(&run),
        s(&copy),
        "--out",
        s(&dir.path().join("again")),
        "--l",
        "4",
        "--device",
        "cpu",
        "--json",
        "-q",
    ]);
    let printed: Value = serde_json::from_str(&json).expect("--json prints JSON");
    assert_eq!(printed["resolution"], v["resolution"]);

    // Not a run folder, or a run of another box: a clear error naming the folder, nothing
    // written.
    let refused = dir.path().join("refused");
    let msg = fails(&[
        "validate",
        s(&run),
        s(dir.path()),
        "--out",
        s(&refused),
        "--device",
        "cpu",
    ]);
    assert!(
        msg.contains(&format!("{}", dir.path().join("config.json").display())),
        "{msg}"
    );
    assert!(msg.contains("is "), "{msg}");
    let other = dir.path().join("box32");
    std::fs::create_dir_all(&other).unwrap();
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    doc["train"]["model"]["box_size"] = 32.into();
    doc["data"]["half_set"] = serde_json::json!([2, 0]);
    std::fs::write(other.join("config.json"), doc.to_string()).unwrap();
    let msg = fails(&[
        "validate",
        s(&run),
        s(&other),
        "--out",
        s(&refused),
        "--device",
        "cpu",
    ]);
    assert!(
        msg.contains(&format!("{}: a box of 32 voxels, but", other.display())),
        "{msg}"
    );
    assert!(
        !refused.exists(),
        "a refused validation wrote {}",
        refused.display()
    );
}

/// A copy of the run folder `from` (its files, not its snapshots) in `to`, its `config.json`
/// recording half `half` of the set (`None`: the whole set), as `train --half-sets` records it.
fn copy_as_half(
    from: &std::path::Path,
    to: &std::path::Path,
    half: Option<usize>,
) -> std::path::PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let path = to.join("config.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    doc["data"]["half_set"] = match half {
        Some(h) => serde_json::json!([h, 0]),
        None => Value::Null,
    };
    std::fs::write(&path, doc.to_string()).unwrap();
    to.to_path_buf()
}
