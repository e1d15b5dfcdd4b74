//! The report called as a library: a small continuous set made with `mcg_dataset`, a short
//! run trained with `mcg_train`, and `mcg_report::report` against the set's truth; and the
//! half-set validation (`validate` module) of such runs against each other.

#[path = "report/classification.rs"]
mod classification;
#[path = "report/validate.rs"]
mod validate;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use mcg_dataset::monitor::Silent;
use mcg_dataset::synth::{LandscapeSource, Preset, SynthSettings, synthesize};
use mcg_report::{Metrics, OUTPUTS, ReportSettings, report};
use mcg_train::data::{PrepareSettings, RunDataSettings, prepare_run};
use mcg_train::device::{self, DeviceChoice};
use mcg_train::run::RunOptions;
use mcg_train::train::TrainConfig;

use mcg_testdata::SMALL_PAPER_RECIPE as SMALL;

/// 64 continuous Hsp90 particles of 16² at 10 Å, and a 2-step run on them.
fn set_and_run(dir: &Path) -> (PathBuf, PathBuf) {
    let data = set(dir);
    let config: TrainConfig = serde_json::from_str(SMALL).unwrap();
    let run = train(&data, config, &dir.join("run"));
    (data, run)
}

/// 64 continuous Hsp90 particles of 16² at 10 Å in DIR/data.
fn set(dir: &Path) -> PathBuf {
    set_of(dir, Preset::Hsp90Continuous)
}

/// 64 particles of `preset` of 16² at 10 Å in DIR/data.
fn set_of(dir: &Path, preset: Preset) -> PathBuf {
    let data = dir.join("data");
    let mut s = SynthSettings::new(LandscapeSource::Preset(preset), 64, &data);
    s.box_size = 16;
    s.apix = 10.0;
    s.calibration_images = 32;
    s.h5 = false;
    synthesize(&s, &Silent::new()).unwrap();
    data
}

/// libtorch's random generator is one per process and the trainer seeds it at every step
/// (`tch::manual_seed`), while this binary's tests run on parallel threads: without taking
/// turns, a run's draws would depend on the other tests' timing (the mixture test passed or
/// failed by the scheduling).
static TORCH_GENERATOR: Mutex<()> = Mutex::new(());

/// A 2-step run of `config` on the set in `data` (prepared as `train` prepares it: σ from the
/// manifest), into `run`.
fn train(data: &Path, mut config: TrainConfig, run: &Path) -> PathBuf {
    let settings = RunDataSettings {
        prepare: PrepareSettings {
            particles: data.join("particles.star"),
            ..PrepareSettings::default()
        },
        fixed_box: true,
        ..RunDataSettings::default()
    };
    let dev = device::select(DeviceChoice::Cpu).unwrap();
    let data_run = prepare_run(&mut config, &settings, dev, &Silent::new(), &|_| Ok(())).unwrap();
    assert!(
        data_run
            .description
            .noise_sigma_source
            .contains("manifest.json")
    );
    let opts = RunOptions {
        out: run.to_path_buf(),
        steps: Some(2),
        minutes: None,
        resume: false,
        force: false,
        device: device::select(DeviceChoice::Cpu).unwrap(),
        init_volumes: Vec::new(),
    };
    let _turn = TORCH_GENERATOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    mcg_train::run::run(
        config,
        &data_run,
        &opts,
        &mut |_: u64, _: Option<u64>, _: &mcg_train::train::StepMetrics| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    run.to_path_buf()
}

#[test]
fn a_continuous_run_is_scored_against_its_truth_result_first() {
    let dir = tempfile::tempdir().unwrap();
    let (data, run) = set_and_run(dir.path());

    // A wrong truth folder is found before anything is written.
    let wrong = dir.path().join("wrong-report");
    let mut settings = ReportSettings::new(&run, &wrong);
    settings.truth = Some(dir.path().to_path_buf());
    settings.device = DeviceChoice::Cpu;
    let err = format!("{:#}", report(&settings, &Silent::new()).unwrap_err());
    assert!(
        err.contains("ground_truth") || err.contains("landscape"),
        "{err}"
    );
    assert!(!wrong.exists(), "a failed report wrote {}", wrong.display());

    let out = dir.path().join("report");
    let mut settings = ReportSettings::new(&run, &out);
    settings.truth = Some(data);
    settings.l = 4;
    settings.history = 0;
    settings.device = DeviceChoice::Cpu;
    let metrics = report(&settings, &Silent::new()).unwrap();

    let c = metrics.continuous.as_ref().expect("a continuous truth");
    assert_eq!(c.parameter, "beta");
    assert_eq!(c.recovered.len(), 5);
    assert!(
        c.recovered.iter().all(|b| (0.0..=20.0).contains(b)),
        "{:?}",
        c.recovered
    );
    assert!((0.0..=20.0).contains(&c.wasserstein1), "{}", c.wasserstein1);
    assert!(metrics.fsc_history.is_none());
    let ends = metrics
        .fsc_ends
        .as_ref()
        .expect("a truth gives the ends' FSC");
    assert!(ends.alpha_0.fsc.area.is_finite());
    assert_eq!(metrics.training.steps, 2);

    // metrics.json is the returned value, and reads back as one; without --half-set it has no
    // half_set field.
    let text = std::fs::read_to_string(out.join("metrics.json")).unwrap();
    assert!(!text.contains("half_set"));
    assert_eq!(text, serde_json::to_string_pretty(&metrics).unwrap() + "\n");
    // serde_json's default float parser may miss the last bit, so the read-back is compared
    // to a relative 1e-15.
    let read: Metrics = serde_json::from_str(&text).unwrap();
    assert_close(
        &serde_json::to_value(&read).unwrap(),
        &serde_json::to_value(&metrics).unwrap(),
        "metrics",
    );

    // The page opens with the result: the ends' resolution and β(α) come before the training
    // curves.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let at = |needle: &str| {
        html.find(needle)
            .unwrap_or_else(|| panic!("report.html lacks {needle:?}"))
    };
    assert!(at("<h2>Result</h2>") < at("<h2>Landscape</h2>"));
    assert!(at("FSC 0.5 (Å)") < at("<h2>Training</h2>"));
    assert!(at("beta of alpha") < at("<h2>Training</h2>"));
    assert!(at("<h2>FSCCC matrices</h2>") < at("<h2>Training</h2>"));
    assert!(
        html.contains("<p>The α = 0 end, against "),
        "the result opens the page"
    );
    assert!(html.contains("reaches FSC 0.5 at"));
    for name in ["beta_alpha.png", "fsccc.png", "montage.png", "fsc_ends.png"] {
        assert!(out.join(name).is_file(), "{name}");
        assert!(OUTPUTS.contains(&name));
    }
}

/// `a` and `b` have the same structure, strings and booleans, and numbers within 1e-15.
fn assert_close(a: &serde_json::Value, b: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}"
            );
            for (k, v) in x {
                assert_close(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                assert_close(v, w, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
                "{at}: {x} vs {y}"
            );
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}
