//! Bad input gets a clear error that names the file, and a non-zero exit status.

use crate::{fails, ok, s, shared};

#[test]
fn missing_file_is_named() {
    let err = fails(&["info", "/nonexistent/particles.star"]);
    assert!(err.contains("/nonexistent/particles.star"), "{err}");
}

#[test]
fn unknown_file_type_lists_the_known_ones() {
    let err = fails(&["info", "notes.docx"]);
    assert!(err.contains("notes.docx") && err.contains(".star"), "{err}");
}

#[test]
fn truncated_stack_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    ok(&["project", "--n", "5", "--box", "16", "-q", "--out", s(&sim)]);
    let stack = sim.join("particles.mrcs");
    let bytes = std::fs::read(&stack).unwrap();
    std::fs::write(&stack, &bytes[..bytes.len() - 100]).unwrap();
    let err = fails(&["info", s(&sim.join("particles.star")), "--read-images"]);
    assert!(err.contains("particles.mrcs"), "{err}");
}

#[test]
fn star_without_poses_cannot_be_projected() {
    let Some(star) = shared("interop/cryodrgn/empiar_10076_7.star") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&[
        "project",
        "--star",
        s(&star),
        "--box",
        "320",
        "--apix",
        "1.31",
        "--out",
        s(dir.path()),
    ]);
    assert!(err.contains("empiar_10076_7.star"), "{err}");
    assert!(
        err.contains("_rlnAngleRot") || err.contains("pixel size"),
        "{err}"
    );
}

#[test]
fn star_missing_a_required_column_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.star");
    std::fs::write(
        &path,
        "data_\nloop_\n_rlnImageName\n_rlnDefocusV\n1@x.mrcs 10000\n",
    )
    .unwrap();
    let err = fails(&["info", s(&path)]);
    assert!(
        err.contains("bad.star") && err.contains("_rlnDefocusU"),
        "{err}"
    );
}

#[test]
fn a_failed_run_leaves_no_half_written_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // An odd box is refused before anything is written.
    fails(&["project", "--n", "5", "--box", "15", "--out", s(&out)]);
    assert!(!out.join("particles.mrcs").exists());
}

/// Ctrl-C (SIGINT), SIGTERM (what `timeout` and schedulers send) and SIGHUP each stop a long
/// run at the next batch; it fails with status 130 and leaves neither the outputs nor their
/// temporary files behind.
#[test]
fn interrupted_run_leaves_nothing_behind() {
    for signal in ["INT", "TERM", "HUP"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // A run that is long (about a minute on two cores: the real-space projector at a 64²
        // box) but small on disk (98 MB), so that the free space of the machine running the
        // tests never refuses it before it starts.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_multicryogan"))
            .args([
                "project",
                "--n",
                "6000",
                "--box",
                "64",
                "--projector",
                "real-space",
                "--batch",
                "16",
                "-q",
                "--out",
                s(&out),
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until the run is under way (its output folder exists), then interrupt it.
        let start = std::time::Instant::now();
        while !out.exists() && start.elapsed() < std::time::Duration::from_secs(60) {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                panic!("SIG{signal}: the run ended ({status}) before it was interrupted: {stderr}");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        let killed = std::process::Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(130), "SIG{signal}: {stderr}");
        assert!(stderr.contains("interrupted"), "SIG{signal}: {stderr}");
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "SIG{signal}: left behind: {left:?}");
    }
}

/// Every floating-point option refuses NaN and infinities, naming the option, before anything
/// runs (one parser serves them all).
#[test]
fn non_finite_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cases: [&[&str]; 5] = [
        &["project", "--n", "5", "--snr-db", "NaN", "--out", s(&out)],
        &[
            "project",
            "--n",
            "5",
            "--noise-sigma",
            "inf",
            "--out",
            s(&out),
        ],
        &[
            "synth",
            "--preset",
            "hsp90-closed",
            "--n",
            "4",
            "--snr-db",
            "-inf",
            "--out",
            s(&out),
        ],
        &[
            "train",
            "--particles",
            "x.star",
            "--out",
            s(&out),
            "--shift-sigma",
            "NaN",
            "--steps",
            "1",
        ],
        &[
            "align",
            "a.mrc",
            "b.mrc",
            "--out",
            s(&out),
            "--angular-step",
            "inf",
        ],
    ];
    for args in cases {
        let err = fails(args);
        let bad = args
            .iter()
            .position(|a| ["NaN", "inf", "-inf"].contains(a))
            .unwrap();
        let option = args[bad - 1];
        assert!(
            err.contains(option) && err.contains("not a finite number"),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

/// An output that is, or would replace, one of the command's inputs — including the image
/// stack a STAR file points at — is refused with an error naming both, and the input is left
/// as it was.
#[test]
fn an_output_never_overwrites_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    ok(&[
        "synth",
        "--preset",
        "hsp90-discrete",
        "--n",
        "8",
        "--box",
        "16",
        "--apix",
        "10",
        "--calibration-images",
        "8",
        "--out",
        s(&data),
        "-q",
    ]);
    let star = data.join("particles.star");
    let stack = data.join("particles.mrcs");
    let h5 = data.join("particles.h5");
    let closed = data.join("ground_truth/beta_00.mrc");
    let open = data.join("ground_truth/beta_20.mrc");
    // A STAR of the first rows, beside the full one, pointing at the same stack.
    let sub = data.join("sub.star");
    let text = std::fs::read_to_string(&star).unwrap();
    let keep: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("@particles.mrcs") || l.starts_with("000001@"))
        .collect();
    std::fs::write(&sub, keep.join("\n") + "\n").unwrap();
    let before: Vec<Vec<u8>> = [&star, &stack, &h5, &closed]
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    // The same file by another way of writing its path.
    let roundabout = data.join("./../data/particles.star");
    // A run's config and a starting map inside the run folder that a fresh run would clear.
    let config = data.join("config.json");
    std::fs::write(&config, "{}").unwrap();
    std::fs::create_dir(data.join("volumes")).unwrap();
    let start = data.join("volumes/start.mrc");
    std::fs::copy(&closed, &start).unwrap();
    let cases: [&[&str]; 9] = [
        &[
            "project",
            "--volume",
            s(&closed),
            "--star",
            s(&star),
            "--out",
            s(&data),
        ],
        &[
            "train",
            "--particles",
            s(&star),
            "--config",
            s(&config),
            "--out",
            s(&data),
            "--force",
        ],
        &[
            "train",
            "--particles",
            s(&star),
            "--init",
            s(&start),
            "--out",
            s(&data),
            "--force",
        ],
        &["ctf", "--star", s(&star), "--out", s(&stack)],
        &["fsc", s(&closed), s(&open), "--plot", s(&closed)],
        &["align", s(&closed), s(&open), "--out", s(&closed)],
        &["convert", s(&sub), s(&star)],
        &["convert", s(&h5), s(&h5)],
        &["convert", s(&star), s(&roundabout)],
    ];
    for args in cases {
        let err = fails(args);
        assert!(err.contains("would overwrite the input"), "{args:?}: {err}");
    }
    assert!(config.exists() && start.exists());
    for (path, bytes) in [&star, &stack, &h5, &closed].iter().zip(&before) {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
}

/// Options whose memory (or disk) the machine does not have are refused before anything is
/// allocated or written, naming the option, the size it implies and what there is; never an
/// allocation abort (issue 13, class 3).
#[test]
fn oversized_options_are_refused_naming_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = crate::train::tiny_set_of(dir.path(), "hsp90-discrete");
    let star = data.to_str().unwrap();
    let truth = data.parent().unwrap().join("ground_truth");
    let (a, b) = (truth.join("beta_00.mrc"), truth.join("beta_20.mrc"));
    let out = dir.path().join("o");
    let o = s(&out);
    let cases: [(&[&str], &str); 7] = [
        (
            &["align", s(&a), s(&b), "--angular-step", "0.2", "--out", o],
            "--angular-step 0.2",
        ),
        (&["project", "--box", "100000", "--out", o], "--box 100000"),
        (
            &["project", "--n", "1000000000000", "--out", o],
            "--n 1000000000000",
        ),
        (
            &[
                "synth",
                "--preset",
                "hsp90-continuous",
                "--box",
                "2048",
                "--out",
                o,
            ],
            "--box 2048",
        ),
        (
            &[
                "synth",
                "--preset",
                "hsp90-continuous",
                "--calibration-images",
                "1000000000",
                "--out",
                o,
            ],
            "--calibration-images 1000000000",
        ),
        (
            &["ctf", "--star", star, "--box", "1000000", "--out", o],
            "--box 1000000",
        ),
        (
            &[
                "project",
                "--n",
                "10",
                "--calibration-images",
                "1000000000",
                "--out",
                o,
            ],
            "--calibration-images 1000000000",
        ),
    ];
    for (args, option) in cases {
        let output = crate::run(args);
        assert_eq!(output.status.code(), Some(1), "{args:?}: not an error exit");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            err.contains(option) && err.contains("needs about") && err.contains("available"),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // Disk: 64 CTFs of 20,000² pixels are 102 GB; refused up front where the disk has less.
    let needed = 64.0 * 20_000f64.powi(2) * 4.0;
    let free = mcg_fsio::budget::free_disk(dir.path()).unwrap_or(u64::MAX) as f64;
    if free < needed {
        let stack = dir.path().join("ctf.mrcs");
        let err = fails(&["ctf", "--star", star, "--box", "20000", "--out", s(&stack)]);
        assert!(err.contains("--box 20000") && err.contains("free"), "{err}");
        assert!(crate::recovery::temporaries(dir.path()).is_empty());
        assert!(!stack.exists());
    }
}

/// A declared image size (`_rlnImageSize`, or .cs `blob/shape`) that disagrees with the stack
/// is refused when the images are opened, naming both, instead of passing into converted files
/// (issue 13, class 5).
#[test]
fn a_declared_image_size_that_disagrees_with_the_stack_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let star = crate::train::tiny_set_of(dir.path(), "hsp90-discrete");
    let mut set =
        mcg_formats::star::read_particles(&star, &Default::default()).expect("the tiny set");
    set.optics[0].image_size = Some(32);
    let wrong = star.with_file_name("wrong.star");
    mcg_formats::star::write_particles(&wrong, &set).unwrap();
    let out = dir.path().join("x.h5");
    let err = fails(&["convert", s(&wrong), s(&out)]);
    assert!(
        err.contains("particles.mrcs") && err.contains("32×32") && err.contains("16×16"),
        "{err}"
    );
    assert!(!out.exists());
}
