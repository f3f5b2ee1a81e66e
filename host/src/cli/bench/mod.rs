//! `payfn bench`: the seed's load scenarios against a running host, as an
//! open model. Iterations are due at a fixed or ramping arrival rate
//! whatever the server does; a request's latency counts from when its
//! iteration was due (the first) or sent (the next ones), so a slow server
//! cannot hide its queue. An iteration due while every in-flight slot is
//! busy is dropped and counted, as k6 does.
//!
//! Meanwhile a task of its own samples the asynchronous half from the
//! host's `/metrics` (outbox lag, settlement consumer lag), and after the
//! load it waits for the pipeline to drain (`pipeline.rs`).

mod cpu;
mod pipeline;
mod report;
mod scenario;
mod schedule;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::AppArgs;
use crate::keys::KeyRing;
use report::Tally;
use scenario::{Scenario, Step};
use schedule::Schedule;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The host to load.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    #[arg(long, value_enum, default_value = "authorize")]
    scenario: Scenario,
    /// Iterations per second (at the start, with --ramp-to).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Ramp the rate linearly to this by the end of the run.
    #[arg(long)]
    ramp_to: Option<f64>,
    /// How long to send, e.g. `30s`, `2m`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Merchants 1..=N take turns (odd and even: both default shards).
    #[arg(long, default_value_t = 100)]
    merchants: i64,
    /// Iterations in flight at most (k6's VUs); one connection each.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Also write the summary as JSON to this file (`-`: stdout, no table).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// How often to scrape the host's `/metrics` for the pipeline's lag
    /// (outbox and settlement consumer), on a task of its own.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pipeline_interval: Duration,
    /// After the load, wait at most this long for the outbox and the
    /// consumer to catch up (`0s`: do not wait).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// The consumer group whose lag is sampled.
    #[arg(long, default_value = "settlement")]
    consumer_group: String,
    /// Do not sample the pipeline (a host that is not payfn, e.g. the peer
    /// comparison's `wasmtime serve`).
    #[arg(long)]
    no_pipeline: bool,
    /// Where the merchant keys come from: the host's key secret.
    #[command(flatten)]
    app: AppArgs,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.ramp_to.is_none_or(|r| r >= 0.0)) || args.duration.is_zero() {
        bail!("--rate must be positive, --ramp-to not negative, --duration above zero");
    }
    if args.merchants < 1 || args.max_in_flight == 0 {
        bail!("--merchants and --max-in-flight must be at least 1");
    }
    if args.pipeline_interval.is_zero() {
        bail!("--pipeline-interval must be above zero");
    }
    let (config, _) = args.app.runtime_config()?;
    let ring = KeyRing::load(&config.keys, &args.app.state_dir())?;
    let keys: Arc<Vec<String>> = Arc::new((1..=args.merchants).map(|m| ring.issue(m)).collect());
    let schedule =
        Schedule { from: args.rate, to: args.ramp_to.unwrap_or(args.rate), duration: args.duration };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.max_in_flight)
        .timeout(Duration::from_secs(60))
        .build()?;
    let quiet = args.json.as_deref() == Some(std::path::Path::new("-"));
    let scenario = args.scenario.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
    if !quiet {
        eprintln!(
            "bench: {} at {} -> {} iterations/s for {:?} ({} iterations), {} merchants, {} in flight at most",
            scenario,
            schedule.from,
            schedule.to,
            args.duration,
            schedule.iterations(),
            args.merchants,
            args.max_in_flight
        );
    }

    let cpu_at_start = cpu::process_time();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let sampler = if args.no_pipeline {
        None
    } else {
        let url = format!("{}/metrics", args.url.trim_end_matches('/'));
        Some(pipeline::Sampler::start(url, args.consumer_group.clone(), args.pipeline_interval)?)
    };
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = tokio::task::JoinSet::new();
    let mut dropped = 0;
    let mut i = 0u64;
    while let Some(offset) = schedule.due(i) {
        let due = start + offset;
        tokio::time::sleep_until(due).await;
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let merchant = (i % keys.len() as u64) as usize;
                let iteration = Iteration {
                    client: client.clone(),
                    base: args.url.clone(),
                    key: keys.clone(),
                    merchant,
                    steps: args.scenario.steps(),
                    due: due.into_std(),
                };
                let tally = tally.clone();
                tasks.spawn(async move {
                    let mine = iteration.run().await;
                    tally.lock().unwrap_or_else(|p| p.into_inner()).merge(mine);
                    drop(permit);
                });
            }
            Err(_) => dropped += 1,
        }
        // Finished tasks are reaped as we go, so the set stays small.
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let load_end = Instant::now();
    let cpu_at_end = cpu::process_time();
    let mut tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    tally.dropped += dropped;
    let mut summary = tally.summary(elapsed);
    summary.scenario = scenario;
    summary.rate = args.rate;
    summary.ramp_to = args.ramp_to;
    summary.load_generator_cores = cpu_at_end
        .zip(cpu_at_start)
        .map(|(end, start)| end.saturating_sub(start).as_secs_f64() / elapsed.as_secs_f64().max(1e-9));
    if let Some(sampler) = sampler {
        if !quiet && !args.drain_timeout.is_zero() {
            eprintln!(
                "bench: load done; waiting for the pipeline to drain (at most {:?})",
                args.drain_timeout
            );
        }
        let drain = match args.drain_timeout.is_zero() {
            true => None,
            false => sampler.drain(load_end, args.drain_timeout).await,
        };
        let samples = sampler.stop();
        summary.pipeline =
            Some(pipeline::PipelineSummary::of(&sampler, &samples, start.into_std(), load_end, drain));
    }
    match args.json.as_deref() {
        Some(path) if path == std::path::Path::new("-") => {
            println!("{}", serde_json::to_string_pretty(&summary)?)
        }
        Some(path) => {
            summary.print();
            std::fs::write(path, serde_json::to_string_pretty(&summary)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        None => summary.print(),
    }
    Ok(())
}

/// One iteration: the scenario's requests for one merchant.
struct Iteration {
    client: reqwest::Client,
    base: String,
    key: Arc<Vec<String>>,
    merchant: usize,
    steps: &'static [Step],
    due: Instant,
}

impl Iteration {
    async fn run(self) -> Tally {
        let mut tally = Tally::default();
        tally.iterations = 1;
        let mut payment = String::new();
        for (n, step) in self.steps.iter().enumerate() {
            // The first request is late by however long the scheduler was.
            let since = if n == 0 { self.due } else { Instant::now() };
            let url = format!("{}{}", self.base, step.path(&payment));
            let request = match step {
                Step::Noop => self.client.get(url),
                _ => self.client.post(url).header("content-type", "application/json").body(step.body()),
            };
            let sent = request.bearer_auth(&self.key[self.merchant]).send().await;
            let response = match sent {
                Ok(response) => response,
                Err(_) => {
                    tally.error(format!("{} transport", step.name()));
                    return tally;
                }
            };
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap_or_default();
            tally.request(step.name(), since.elapsed());
            if status != step.expected() {
                tally.error(format!("{} {status}", step.name()));
                return tally;
            }
            if *step == Step::Authorize {
                let id = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
                match id {
                    Some(id) => payment = id,
                    None => {
                        tally.error("authorize without an id".to_string());
                        return tally;
                    }
                }
            }
        }
        tally
    }
}
