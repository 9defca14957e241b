//! `pgwarden-fuzz`: runs each target on mutated inputs for a bounded time,
//! keeping the inputs that reach new code (when built by `make fuzz` with
//! coverage instrumentation), and stops with the failing input saved when a
//! target panics or breaks its property.

mod coverage;
mod mutate;
mod targets;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use ha_sim::rng::Rng;

#[derive(Debug, Parser)]
#[command(name = "pgwarden-fuzz", about = "Fuzz what pgwarden parses from outside")]
struct Args {
    /// Targets to run, one after the other (all when none is named):
    /// config, dynamic, settings, checks, etcd, rest.
    targets: Vec<String>,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed of the mutation sequence (the same seed and binary repeat a run
    /// of an uninstrumented build exactly).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where failing inputs and the corpus grown are written.
    #[arg(long, default_value = "target/fuzz-out")]
    out: PathBuf,
    /// Run one saved input against the first target named and report.
    #[arg(long)]
    replay: Option<PathBuf>,
}

/// The message of the last panic, from any thread (the REST server's tasks
/// run on the fuzzer's runtime and do not unwind into it).
static PANICKED: Mutex<Option<String>> = Mutex::new(None);

fn take_panic() -> Option<String> {
    PANICKED.lock().unwrap_or_else(|e| e.into_inner()).take()
}

/// One input through one target: a panic or a broken property.
fn run_one(target: &mut dyn targets::Target, input: &[u8]) -> Result<(), String> {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.run(input)));
    if let Some(message) = take_panic() {
        return Err(format!("panic: {message}"));
    }
    match result {
        Ok(outcome) => outcome,
        Err(_) => Err("panic (no message)".into()),
    }
}

struct Report {
    runs: u64,
    kept: usize,
    edges: u64,
    failures: Vec<(String, PathBuf)>,
}

fn save(dir: &Path, name: &str, input: &[u8]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(name);
    std::fs::File::create(&path)?.write_all(input)?;
    Ok(path)
}

fn fuzz(target: &mut dyn targets::Target, args: &Args, rng: &mut Rng) -> anyhow::Result<Report> {
    let mut coverage = coverage::Coverage::default();
    let mut corpus = Vec::new();
    let mut report = Report { runs: 0, kept: 0, edges: 0, failures: Vec::new() };
    let name = target.name();
    let out = args.out.join(name);
    let mut failed_messages = std::collections::BTreeSet::new();
    let mut record = |report: &mut Report, why: String, input: &[u8]| -> anyhow::Result<()> {
        // One saved input per distinct failure: a panic's location, or the
        // message's first line.
        let key = match why.rsplit_once(" at ") {
            Some((_, location)) if why.starts_with("panic") => location.to_string(),
            _ => why.lines().next().unwrap_or_default().to_string(),
        };
        if failed_messages.insert(key) {
            let path = save(&out, &format!("failure-{}", report.failures.len() + 1), input)?;
            eprintln!("{name}: FAILED: {why}\n  input saved to {}", path.display());
            report.failures.push((why, path));
        }
        Ok(())
    };
    for seed in target.seeds() {
        coverage.reset();
        report.runs += 1;
        if let Err(why) = run_one(target, &seed) {
            record(&mut report, why, &seed)?;
        }
        coverage.merge();
        corpus.push(seed);
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let dictionary = target.dictionary();
    let max_len = target.max_len();
    while Instant::now() < deadline {
        for _ in 0..64 {
            let mut input = corpus[rng.pick(corpus.len())].clone();
            mutate::mutate(rng, &mut input, &corpus, dictionary, max_len);
            coverage.reset();
            report.runs += 1;
            let outcome = run_one(target, &input);
            let new = coverage.merge();
            if let Err(why) = outcome {
                record(&mut report, why, &input)?;
            } else if new {
                report.kept += 1;
                corpus.push(input);
            }
        }
    }
    report.edges = coverage.edges();
    for (n, input) in corpus.iter().enumerate() {
        save(&out.join("corpus"), &format!("{n:06}"), input)?;
    }
    Ok(report)
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        *PANICKED.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{message}{location}"));
    }));
    let names: Vec<String> = if args.targets.is_empty() {
        targets::NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        args.targets.clone()
    };
    if let Some(path) = &args.replay {
        let input = std::fs::read(path)?;
        let mut target = targets::by_name(&names[0])?;
        return Ok(match run_one(target.as_mut(), &input) {
            Ok(()) => {
                println!("{}: {} passes", names[0], path.display());
                std::process::ExitCode::SUCCESS
            }
            Err(why) => {
                println!("{}: {} fails: {why}", names[0], path.display());
                std::process::ExitCode::FAILURE
            }
        });
    }
    let instrumented = coverage::instrumented_edges();
    println!(
        "pgwarden-fuzz: {} s per target, seed {}, {}",
        args.seconds,
        args.seed,
        if instrumented > 0 {
            format!("coverage-guided ({instrumented} instrumented edges)")
        } else {
            "no coverage instrumentation (mutation only; `make fuzz` builds with it)".into()
        }
    );
    let mut failed = false;
    for (n, name) in names.iter().enumerate() {
        let mut target = targets::by_name(name)?;
        let mut rng = Rng::new(args.seed.wrapping_add(n as u64));
        let started = Instant::now();
        let report = fuzz(target.as_mut(), &args, &mut rng)?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "{name:9} {:>10} inputs in {seconds:.0} s ({:.0}/s), {} kept for new coverage, {} edges, {} failure(s)",
            report.runs,
            report.runs as f64 / seconds,
            report.kept,
            report.edges,
            report.failures.len()
        );
        for (why, path) in &report.failures {
            println!("  {why}\n    replay: pgwarden-fuzz {name} --replay {}", path.display());
        }
        failed |= !report.failures.is_empty();
    }
    Ok(if failed { std::process::ExitCode::FAILURE } else { std::process::ExitCode::SUCCESS })
}
