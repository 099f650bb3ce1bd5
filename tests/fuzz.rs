//! The coverage-guided fuzz targets of `fuzz/`, each run for a short budget from its corpus
//! (kept in `fuzz/corpus/`), built on the stable toolchain with libFuzzer's instrumentation.
//! A crash, a failed assertion or an input over its time limit fails the test and names the
//! input that did it; that input, added to the target's corpus, is replayed by every later run.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Seconds of fuzzing per target: a minute in all.
const BUDGET: &[(&str, u32)] = &[
    ("frontend", 8),
    ("startup", 6),
    ("backend", 8),
    ("scram", 6),
    ("sql", 12),
    ("session", 20),
];

/// The flags `cargo fuzz build -s none` gives rustc: coverage counters and comparison hooks
/// for libFuzzer, no sanitizer (which would need a nightly compiler).
const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_owned()
}

/// Builds every target; returns the folder of their binaries. The build has a target folder
/// of its own: the instrumented flags would otherwise rebuild the tests' dependencies.
fn build(root: &Path) -> PathBuf {
    let triple = host_triple();
    let target_dir = root.join("target/fuzz");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root.join("fuzz"))
        .args(["build", "--release", "--bins", "--target", &triple])
        .arg("--target-dir")
        .arg(&target_dir)
        // A target triple keeps these flags off build scripts, as cargo fuzz does.
        .env("RUSTFLAGS", RUSTFLAGS)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("run cargo build for fuzz/");
    assert!(status.success(), "building the fuzz targets failed");
    target_dir.join(triple).join("release")
}

/// Runs one target for `seconds` over its kept corpus; new inputs and any crash go to `work`.
fn run(bin: &Path, target: &str, seconds: u32, corpus: &Path, work: &Path, env: &[(&str, String)]) {
    let found = work.join(target);
    std::fs::create_dir_all(&found).unwrap();
    let artifacts = format!("-artifact_prefix={}/", found.display());
    let out = Command::new(bin.join(target))
        .arg(format!("-max_total_time={seconds}"))
        .args(["-timeout=30", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .arg(artifacts)
        .arg(&found)
        .arg(corpus.join(target))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("start the fuzz target");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let runs = stderr
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units: "))
        .unwrap_or("?");
    eprintln!("fuzz {target}: {runs} inputs in {seconds} s");
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let crash = std::fs::read_dir(&found)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                name.starts_with("crash-")
                    || name.starts_with("timeout-")
                    || name.starts_with("oom-")
            });
        let input = crash
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| format!("{b:?}"))
            .unwrap_or_default();
        panic!(
            "fuzz target {target} failed ({}); input {crash:?} = {input}\n\
             add it to fuzz/corpus/{target}/ once fixed. Its output ends:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

#[test]
fn every_fuzz_target_runs_its_budget_without_a_failure() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = build(root);
    let work = tempfile::tempdir().unwrap();
    let corpus = root.join("fuzz/corpus");

    // The session target's server: a role with no special rights, in a database of its own.
    let pg = support::primary();
    pg.psql("CREATE ROLE fuzz LOGIN PASSWORD 'fuzz'").unwrap();
    pg.psql("CREATE DATABASE fuzz OWNER fuzz").unwrap();
    let env = [("PGSLUICE_FUZZ_PORT", pg.port.to_string())];

    for (target, seconds) in BUDGET {
        run(&bin, target, *seconds, &corpus, work.path(), &env);
    }
}
