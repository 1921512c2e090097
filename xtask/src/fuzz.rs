//! `cargo xtask fuzz [--seconds N] [TARGET...]`: run every cargo-fuzz target of `fuzz/` for N
//! seconds (default 600) and print how many inputs each executed.
//!
//! Needs a nightly toolchain and cargo-fuzz, which it installs when missing
//! (`rustup toolchain install nightly`, `cargo install cargo-fuzz`). New inputs go to `target/fuzz/corpus/<target>/`, so the committed seeds in
//! `fuzz/corpus/<target>/` stay small; crashes land in `fuzz/artifacts/<target>/`. Built without
//! a sanitizer (`-s none`: the agent forbids `unsafe`) but with debug assertions and overflow
//! checks, so exec rates are those of optimised code.

use std::path::Path;
use std::process::Command;
use xtask::{root, target_dir};

type Result<T = ()> = std::result::Result<T, String>;

/// `cargo` through rustup's proxy (so that `+nightly` works), without the variables the
/// running `cargo xtask` (stable) set for itself.
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly");
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(var);
    }
    c
}

/// One target's figures, from libFuzzer's `-print_final_stats=1`.
#[derive(Debug, Default)]
struct Stats {
    execs: u64,
    exec_per_s: u64,
    corpus: Option<String>,
    crash: Option<String>,
}

fn stat(log: &str, key: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.strip_prefix(key))
        .filter_map(|v| v.trim().trim_start_matches(':').trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

fn parse_log(log: &str) -> Stats {
    Stats {
        execs: stat(log, "stat::number_of_executed_units"),
        exec_per_s: stat(log, "stat::average_exec_per_sec"),
        // The last status line, e.g. "#1234 DONE cov: 1168 ft: 2430 corp: 11/7069b ...".
        corpus: log
            .lines()
            .rfind(|l| l.starts_with('#') && l.contains("cov:"))
            .map(|l| {
                l.split_whitespace()
                    .skip(2)
                    .take(6)
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
        crash: log.lines().find_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, p)| p.trim().to_string())
        }),
    }
}

pub fn run(args: &[String]) -> Result {
    let mut seconds = 600u64;
    let mut only = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a value")?;
                seconds = v
                    .parse()
                    .map_err(|_| format!("--seconds: `{v}` is not a number"))?;
            }
            t if !t.starts_with('-') => only.push(t.to_string()),
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: cargo xtask fuzz [--seconds N] [TARGET...]"
                ))
            }
        }
    }
    let fuzz_dir = root().join("fuzz");
    // Installed by `cargo xtask` before this runs (`setup::needs_of`); checked again for
    // callers of this function (`cargo xtask test`).
    xtask::setup::ensure(&[xtask::setup::Need::CargoFuzz])?;
    let list = nightly_cargo()
        .args(["fuzz", "list"])
        .current_dir(&fuzz_dir)
        .output()
        .map_err(|e| format!("cargo fuzz list: {e}"))?;
    let mut targets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if !only.is_empty() {
        if let Some(t) = only.iter().find(|t| !targets.contains(t)) {
            return Err(format!(
                "no fuzz target `{t}`; targets: {}",
                targets.join(", ")
            ));
        }
        targets.retain(|t| only.contains(t));
    }
    if targets.is_empty() {
        return Err("cargo fuzz list found no targets in fuzz/".into());
    }

    // Build all first, so that the time budget is spent fuzzing.
    let mut build = nightly_cargo();
    build
        .args(["fuzz", "build", "-s", "none"])
        .current_dir(&fuzz_dir);
    eprintln!("xtask fuzz: cargo +nightly fuzz build -s none (in fuzz/)");
    let s = build
        .status()
        .map_err(|e| format!("cargo fuzz build: {e}"))?;
    if !s.success() {
        return Err(format!("cargo fuzz build failed: {s}"));
    }

    let logs = target_dir().join("fuzz/logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for t in &targets {
        let work = target_dir().join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let seeds = fuzz_dir.join("corpus").join(t);
        let log_path = logs.join(format!("{t}.log"));
        let log_file =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        eprintln!(
            "xtask fuzz: {t} for {seconds} s: cargo +nightly fuzz run -s none {t} {} {} -- -max_total_time={seconds} (log: {})",
            show(&work),
            show(&seeds),
            show(&log_path)
        );
        let mut run = nightly_cargo();
        run.args(["fuzz", "run", "-s", "none", t])
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048"])
            .current_dir(&fuzz_dir)
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file);
        let status = run
            .status()
            .map_err(|e| format!("cargo fuzz run {t}: {e}"))?;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let mut stats = parse_log(&log);
        if !status.success() && stats.crash.is_none() {
            stats.crash = Some(format!("exit {status}; see {}", show(&log_path)));
        }
        results.push((t.clone(), stats));
    }

    println!(
        "\n{:<14} {:>12} {:>9}  {:<44} result",
        "target", "execs", "exec/s", "coverage"
    );
    let mut failed = Vec::new();
    for (t, s) in &results {
        println!(
            "{:<14} {:>12} {:>9}  {:<44} {}",
            t,
            s.execs,
            s.exec_per_s,
            s.corpus.as_deref().unwrap_or("-"),
            match &s.crash {
                Some(c) => format!("CRASH: {c}"),
                None => "ok".into(),
            }
        );
        if let Some(c) = &s.crash {
            failed.push(format!(
                "{t}: {c} (reproduce: cd fuzz && cargo +nightly fuzz run -s none {t} {c})"
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("crashes:\n  {}", failed.join("\n  ")))
    }
}

fn show(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_stats() {
        let log = "#2\tINITED cov: 124 ft: 231 corp: 16/2287b exec/s: 0 rss: 41Mb\n\
                   #98765\tDONE   cov: 130 ft: 260 corp: 20/3000b lim: 232 exec/s: 1646 rss: 60Mb\n\
                   Done 98765 runs in 61 second(s)\n\
                   stat::number_of_executed_units: 98765\n\
                   stat::average_exec_per_sec:     1619\n";
        let s = parse_log(log);
        assert_eq!(s.execs, 98765);
        assert_eq!(s.exec_per_s, 1619);
        assert_eq!(s.corpus.as_deref(), Some("cov: 130 ft: 260 corp: 20/3000b"));
        assert!(s.crash.is_none());
        let crash = "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='x/'; Test unit written to fuzz/artifacts/t/crash-abc\n";
        assert_eq!(
            parse_log(crash).crash.as_deref(),
            Some("fuzz/artifacts/t/crash-abc")
        );
    }
}
