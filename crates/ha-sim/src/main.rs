//! `ha-sim`: run seeded schedules, or replay one with its trace.
//!
//! ```text
//! ha-sim --seeds 100000            # seeds 0..100000 on every core
//! ha-sim --replay 4242             # one seed, its shrunk trace
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Deterministic simulation of a pgwarden cluster under seeded faults")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 10_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Replay one seed and print its trace (shrunk when it violates an invariant).
    #[arg(long)]
    replay: Option<u64>,
    /// With --replay: the whole run, not shrunk.
    #[arg(long)]
    no_shrink: bool,
}

/// One worker's count: seeds, events, acknowledged commits, violations (seed, what).
type Tally = (u64, u64, u64, Vec<(u64, String)>);

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(seed) = args.replay {
        return replay(seed, !args.no_shrink);
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let next = std::sync::atomic::AtomicU64::new(args.start);
    let end = args.start + args.seeds;
    let results: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let (mut seeds, mut events, mut acked, mut bad) = (0, 0, 0, Vec::new());
                    loop {
                        let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if seed >= end {
                            break;
                        }
                        let outcome = ha_sim::run(seed, ha_sim::Options::default());
                        seeds += 1;
                        events += outcome.events;
                        acked += outcome.acknowledged;
                        if let Some(v) = outcome.violation {
                            bad.push((seed, v.what));
                        }
                    }
                    (seeds, events, acked, bad)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a simulation thread panicked")).collect()
    });
    let seeds: u64 = results.iter().map(|r| r.0).sum();
    let events: u64 = results.iter().map(|r| r.1).sum();
    let acked: u64 = results.iter().map(|r| r.2).sum();
    let mut bad: Vec<(u64, String)> = results.into_iter().flat_map(|r| r.3).collect();
    bad.sort();
    let mut kinds = std::collections::BTreeMap::new();
    for (seed, what) in &bad {
        kinds.entry(ha_sim::kind(what)).or_insert_with(Vec::new).push(*seed);
    }
    for (kind, seeds) in &kinds {
        println!("{kind}: {} seeds, e.g. {:?}", seeds.len(), &seeds[..seeds.len().min(8)]);
    }
    for (seed, what) in bad.iter().take(20) {
        println!("seed {seed}: {what}");
        println!("  replay: cargo run --release -p ha-sim -- --replay {seed}");
    }
    println!(
        "ha-sim: {seeds} seeds, {events} events, {acked} acknowledged commits, {} violations in {:.1} s on {threads} threads",
        bad.len(),
        started.elapsed().as_secs_f64()
    );
    if bad.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn replay(seed: u64, shrink: bool) -> ExitCode {
    let mut opts = if shrink { ha_sim::shrink(seed) } else { ha_sim::Options::default() };
    opts.trace = true;
    let outcome = ha_sim::run(seed, opts.clone());
    for line in &outcome.trace {
        println!("{line}");
    }
    if shrink && (!opts.skip_faults.is_empty() || !opts.skip_operators.is_empty()) {
        println!(
            "(shrunk: faults {:?} and operator actions {:?} of the schedule left out; --no-shrink for the whole run)",
            opts.skip_faults, opts.skip_operators
        );
    }
    match outcome.violation {
        Some(v) => {
            println!("seed {seed}: VIOLATION at {:.3}s: {}", v.at as f64 / 1000.0, v.what);
            ExitCode::FAILURE
        }
        None => {
            println!("seed {seed}: {} events, no violation", outcome.events);
            ExitCode::SUCCESS
        }
    }
}
