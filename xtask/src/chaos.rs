//! `cargo xtask chaos`: the full fault-injection suite (`tests/tests/chaos.rs`:
//! kill -9 each stage and the conductor at 20 random instants each, 10
//! races of two conductors on one store, the hostile specs and the hostile
//! image folder). Prints the counts and writes them to BENCHMARKS.md's
//! reliability section, failures included; fails if any check failed.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// Kills per target (ingest, features, head, finetune, the conductor).
    #[arg(long, default_value_t = 20)]
    kills: u64,
    /// Races of two conductors on one store.
    #[arg(long, default_value_t = 10)]
    races: u64,
    /// Seed of the kill instants.
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Print the counts without updating BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
}

pub fn run(args: &Args) -> Result<()> {
    crate::setup()?;
    // The suite runs the debug stage binaries next to the test executable.
    util::cargo(&["build", "--workspace", "--bins"])?;
    let report = util::workspace_root().join("target/chaos-report.json");
    let _ = std::fs::remove_file(&report);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "-p", "e2e-tests", "--test", "chaos", "--", "--nocapture"])
        .env("CHAOS_FULL", "1")
        .env("CHAOS_KILLS", args.kills.to_string())
        .env("CHAOS_RACES", args.races.to_string())
        .env("CHAOS_SEED", args.seed.to_string())
        .env("CHAOS_REPORT", &report)
        .status()
        .context("starting cargo test")?;
    let text = std::fs::read_to_string(&report)
        .with_context(|| format!("the chaos suite wrote no report {} (it did not finish)", report.display()))?;
    let counts: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", report.display()))?;
    let section = reliability_section(&counts, args);
    println!("\n{section}");
    if !args.no_write {
        crate::bench::write_section("reliability", &section)?;
        println!("updated BENCHMARKS.md");
    }
    if !status.success() {
        bail!("the chaos suite found failures (listed above and in {})", report.display());
    }
    Ok(())
}

/// BENCHMARKS.md's reliability section from the suite's JSON report.
fn reliability_section(counts: &serde_json::Value, args: &Args) -> String {
    let n = |key: &str| counts[key].as_u64().unwrap_or(0);
    let mut out = String::from("## Reliability\n\n");
    out.push_str(&format!(
        "Command: `cargo xtask chaos` (seed {}; the CI version is `cargo test -p e2e-tests --test chaos`, two kills per \
         target and two races). The fault-injection suite in `tests/tests/chaos.rs`, debug build, on the tiny \
         experiment (`tests/golden/tiny.toml`): `kill -9` of each stage and of the conductor at random instants of \
         its usual duration, each on a fresh store, then a rerun that must exit 0 with outputs byte-identical \
         (golden's digests; cache hits and the resumed epoch masked) to an uninterrupted run, no `.partial` \
         left in the store and no error in its output or logs; two conductors started at once on one store; \
         hostile specs (traversal and absolute names, option-like pip requirements, wrong types, unknown keys, \
         missing sections, huge numbers, NaN/Inf/zero normalisation), \
         each to be refused with one error line naming the file and nothing written outside the run's folders; a \
         hostile image folder (FIFO, link to /dev/zero, link loop, dangling link, non-UTF-8 name, 100000×1 PNG, \
         PNG declaring 10⁹ pixels) that ingest must get through in a minute under 500 MB, naming each reject, \
         and the conductor too.\n\n",
        args.seed
    ));
    out.push_str(
        "| kill target | kills | survived | landed while it ran | landed after it ended |\n|---|---|---|---|---|\n",
    );
    if let Some(kills) = counts["kills"].as_object() {
        for (target, c) in kills {
            let c = |key: &str| c[key].as_u64().unwrap_or(0);
            out.push_str(&format!(
                "| {target} | {} | {} | {} | {} |\n",
                c("tried"),
                c("survived"),
                c("landed_while_running"),
                c("landed_after_end")
            ));
        }
    }
    out.push_str(&format!(
        "| **all** | **{}** | **{}** | {} | {} |\n\n",
        n("kills_tried"),
        n("kills_survived"),
        n("kills_landed_while_running"),
        n("kills_landed_after_end")
    ));
    out.push_str(&format!(
        "| check | tried | passed |\n|---|---|---|\n| races (two conductors, one store) | {} | {} |\n| hostile specs \
         | {} | {} |\n| hostile folder (7 files through ingest, the folder through the conductor) | {} | {} |\n\n",
        n("races_run"),
        n("races_passed"),
        n("hostile_specs_tried"),
        n("hostile_specs_passed"),
        n("hostile_files_tried"),
        n("hostile_files_passed")
    ));
    let failures: Vec<&str> = counts["failures"].as_array().into_iter().flatten().filter_map(|f| f.as_str()).collect();
    out.push_str(&format!(
        "Failures: {} in {:.0} s (machine: {}).\n",
        failures.len(),
        counts["seconds"].as_f64().unwrap_or(0.0),
        crate::bench::machine()
    ));
    for failure in failures {
        out.push_str(&format!("- {}\n", failure.replace('\n', " ")));
    }
    out
}
