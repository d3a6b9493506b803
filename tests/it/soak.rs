//! The fault-injecting soak of `examples/soak/` at CI size: the real
//! binary restarted with SIGTERM and SIGKILL while subscribers on all five
//! rungs are killed and resume. Run it at full size with
//! `cargo run --release --example soak -- --secs 120`.

use std::time::Duration;

use anyhow::Result;

use ladder_testkit::soak as engine;

use crate::helpers::temp_dir;

fn opts(tag: &str, server_args: Vec<String>, durable: bool) -> engine::Opts {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    engine::Opts {
        secs: 20,
        server_bin: env!("CARGO_BIN_EXE_ladder").into(),
        server_args,
        channels: 2,
        subs_per_rung: 1,
        publish_every: Duration::from_millis(50),
        restart_every: (3.0, 6.0),
        kill_every: (1.0, 4.0),
        seed,
        expect_no_truncation: durable,
        work_dir: temp_dir(tag),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_in_memory_restarts_are_announced_never_silent() -> Result<()> {
    let report = engine::run(opts("soak-mem", Vec::new(), false)).await?;
    println!("{report}");
    report.check()?;
    assert!(
        report.restarts_graceful >= 1 && report.restarts_killed >= 1,
        "{report}"
    );
    // In-memory history dies with the process: resuming clients are told.
    assert!(report.total().0.truncations >= 1, "{report}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_durable_restarts_lose_nothing() -> Result<()> {
    let dir = temp_dir("soak-data");
    let args = vec!["--data-dir".to_owned(), dir.display().to_string()];
    let report = engine::run(opts("soak-durable", args, true)).await?;
    println!("{report}");
    // No truncation at all, and every acked message delivered.
    report.check()?;
    assert!(
        report.restarts_graceful >= 1 && report.restarts_killed >= 1,
        "{report}"
    );
    Ok(())
}
