//! `cargo xtask bench`: every benchmark of the project, timed end to end through the release
//! CLI as a user would run it, printed and written to `bench-results/bench.json` together with
//! a description of the machine. Numbers, not assertions: nothing here fails on a slow machine.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{setup, util};

/// One measured figure.
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    target: Option<String>,
    detail: Value,
}

pub fn run(rest: &[String]) -> Result<()> {
    let quick = rest.iter().any(|a| a == "--quick");
    setup::run()?;
    util::cargo(&["build", "--release", "--bin", "multicryogan"])?;
    let root = util::root();
    let bin = root.join("target/release/multicryogan");
    let work = root.join("bench-results/work");
    std::fs::create_dir_all(&work).context("creating bench-results/work")?;

    let mut figures = Vec::new();
    let sizes: &[(usize, usize)] = if quick {
        &[(32, 10_000), (64, 2_000), (128, 500)]
    } else {
        &[(32, 100_000), (64, 20_000), (128, 5_000)]
    };
    for &(box_size, n) in sizes {
        let out = work.join(format!("project_{box_size}"));
        let (secs, report) = timed(
            &bin,
            &[
                "project",
                "--n",
                &n.to_string(),
                "--box",
                &box_size.to_string(),
                "--apix",
                "5",
                "--ctf",
                "--snr-db",
                "-10",
                "--seed",
                "1",
                "--json",
                "--quiet",
                "--out",
                &out.to_string_lossy(),
            ],
        )?;
        figures.push(Figure {
            name: format!("project {box_size}² with CTF and noise, end to end incl. writing"),
            value: n as f64 / secs,
            unit: "images/s",
            target: (box_size == 32).then(|| "≥ 20,000 images/s".to_string()),
            detail: json!({"images": n, "wall_s": secs, "report": report}),
        });
    }

    // Issue 3: the Hsp90 benchmark end to end (ground truth, stack, STAR and container), and
    // peak memory at two sizes to show it does not grow with the images.
    let synth_sizes: &[usize] = if quick {
        &[2_000, 10_000]
    } else {
        &[10_000, 100_000]
    };
    for &n in synth_sizes {
        for h5 in [true, false] {
            let out = work.join(format!("synth_{n}_{h5}"));
            let n_s = n.to_string();
            let out_s = out.to_string_lossy().into_owned();
            let mut args = vec![
                "synth",
                "--preset",
                "hsp90-continuous",
                "--n",
                &n_s,
                "--seed",
                "1",
                "--json",
                "--quiet",
                "--out",
                &out_s,
            ];
            if !h5 {
                args.push("--no-h5");
            }
            let (secs, report) = timed(&bin, &args)?;
            let manifest: Value = std::fs::read_to_string(out.join("manifest.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            let source = manifest["settings"]["structures"].clone();
            figures.push(Figure {
                name: format!(
                    "synth Hsp90 {n} × 32², CTF + noise, end to end{}",
                    if h5 { " incl. HDF5" } else { ", no HDF5" }
                ),
                value: secs,
                unit: "s",
                target: (n == 100_000 && h5).then(|| "< 10 s".to_string()),
                detail: json!({"images": n, "images_per_second": n as f64 / secs,
                    "peak_rss_mib": report["peak_rss_mib"], "structures": source,
                    "report": report}),
            });
            std::fs::remove_dir_all(&out).ok();
        }
    }

    let star = work.join("project_32/particles.star");
    let (secs, report) = timed(
        &bin,
        &["info", &star.to_string_lossy(), "--read-images", "--json"],
    )?;
    let n = sizes[0].1;
    figures.push(Figure {
        name: format!("read {n} images of 32² and their STAR (streaming, all pixels touched)"),
        value: secs,
        unit: "s",
        target: (!quick).then(|| "< 1 s for 100,000 images".to_string()),
        detail: json!({"images": n, "report": report}),
    });

    let machine = machine();
    println!("\nmachine: {}", machine["cpu"].as_str().unwrap_or("?"));
    for f in &figures {
        println!(
            "{:<72} {:>12.1} {:<9} {}",
            f.name,
            f.value,
            f.unit,
            f.target
                .as_deref()
                .map(|t| format!("(target {t})"))
                .unwrap_or_default()
        );
    }
    let doc = json!({
        "machine": machine,
        "quick": quick,
        "results": figures.iter().map(|f| json!({
            "name": f.name, "value": f.value, "unit": f.unit, "target": f.target, "detail": f.detail,
        })).collect::<Vec<_>>(),
    });
    let path = root.join("bench-results/bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    std::fs::remove_dir_all(&work).ok();
    println!("written: {}", path.display());
    Ok(())
}

/// Runs the CLI, returning the wall time and its JSON report (stdout).
fn timed(bin: &Path, args: &[&str]) -> Result<(f64, Value)> {
    let start = Instant::now();
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        anyhow::bail!(
            "{} {} failed:\n{}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((secs, report))
}

/// CPU model, core count, memory and OS of this machine.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0 / 1024.0);
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": mem_gib,
        "os": util::output("uname", &["-sr"]).map(|s| s.trim().to_string()),
        "rustc": util::output("rustc", &["--version"]).map(|s| s.trim().to_string()),
    })
}
