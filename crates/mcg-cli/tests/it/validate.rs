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

    // A run against itself: every matched point at Nyquist, the files written.
    let out = dir.path().join("validation");
    let printed = ok(&[
        "validate",
        s(&run),
        s(&run),
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
        s(&run),
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
