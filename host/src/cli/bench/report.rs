//! What a run measured: counts and latency histograms per step, and the
//! summary printed as a table and as JSON.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::pipeline::PipelineSummary;

/// Counts and latencies, merged from every worker.
#[derive(Default)]
pub struct Tally {
    histograms: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<String, u64>,
    pub iterations: u64,
    pub dropped: u64,
}

/// Microseconds, 1 µs to 10 min, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid")
}

impl Tally {
    /// One answered request of `step` (errors included: they took time too).
    pub fn request(&mut self, step: &'static str, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, 600_000_000);
        let histogram = self.histograms.entry(step).or_insert_with(histogram);
        // In bounds by the clamp above.
        let _ = histogram.record(micros);
    }

    /// One failed request: `what` is `<step> <status>` or `<step> transport`.
    pub fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        for (step, theirs) in other.histograms {
            let mine = self.histograms.entry(step).or_insert_with(histogram);
            // Same bounds on both sides: adding cannot fail.
            let _ = mine.add(&theirs);
        }
        for (what, n) in other.errors {
            *self.errors.entry(what).or_default() += n;
        }
        self.iterations += other.iterations;
        self.dropped += other.dropped;
    }

    /// The summary of a run that lasted `elapsed`.
    pub fn summary(&self, elapsed: Duration) -> Summary {
        let mut all = histogram();
        for histogram in self.histograms.values() {
            let _ = all.add(histogram);
        }
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let steps =
            self.histograms.iter().map(|(step, h)| (step.to_string(), Latency::of(h, seconds))).collect();
        let errors: u64 = self.errors.values().sum();
        Summary {
            scenario: String::new(),
            rate: 0.0,
            ramp_to: None,
            seconds,
            iterations: self.iterations,
            dropped_iterations: self.dropped,
            requests: all.len(),
            requests_per_sec: all.len() as f64 / seconds,
            errors,
            error_kinds: self.errors.clone(),
            latency: Latency::of(&all, seconds),
            steps,
            load_generator_cores: None,
            pipeline: None,
        }
    }
}

/// The whole run.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    /// Which scenario ran (`authorize`, `authorize-capture`, `full`, `noop`),
    /// at which arrival rate (iterations/s; `ramp_to` at the end of a ramp).
    pub scenario: String,
    pub rate: f64,
    pub ramp_to: Option<f64>,
    pub seconds: f64,
    pub iterations: u64,
    /// Iterations that were due while every in-flight slot was busy: not
    /// sent, as k6 counts `dropped_iterations`.
    pub dropped_iterations: u64,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub latency: Latency,
    pub steps: BTreeMap<String, Latency>,
    /// CPU the load generator used over the run, in cores (1.0: one core
    /// busy the whole time); on a shared machine the host had that less.
    pub load_generator_cores: Option<f64>,
    /// The outbox and the settlement consumer during and after the load,
    /// from the host's `/metrics` (`None` with `--no-pipeline`).
    pub pipeline: Option<PipelineSummary>,
}

/// Latency quantiles in milliseconds, and the throughput they came with.
#[derive(Debug, serde::Serialize)]
pub struct Latency {
    pub count: u64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>, seconds: f64) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            count: h.len(),
            per_sec: h.len() as f64 / seconds,
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: h.max() as f64 / 1000.0,
        }
    }
}

impl Summary {
    /// The human-readable table.
    pub fn print(&self) {
        println!(
            "scenario {} at {}{} iterations/s",
            self.scenario,
            self.rate,
            self.ramp_to.map_or(String::new(), |to| format!(" -> {to}"))
        );
        println!(
            "{} requests in {:.1} s: {:.0} req/s; {} iterations, {} dropped; {} errors",
            self.requests,
            self.seconds,
            self.requests_per_sec,
            self.iterations,
            self.dropped_iterations,
            self.errors
        );
        println!(
            "  {:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "count", "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "max ms"
        );
        let row = |name: &str, l: &Latency| {
            println!(
                "  {:<10} {:>8} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name, l.count, l.per_sec, l.p50_ms, l.p90_ms, l.p95_ms, l.p99_ms, l.max_ms
            )
        };
        for (step, latency) in &self.steps {
            row(step, latency);
        }
        row("all", &self.latency);
        for (what, n) in &self.error_kinds {
            println!("  error {what}: {n}");
        }
        if let Some(cores) = self.load_generator_cores {
            println!("  load generator: {cores:.2} cores of CPU");
        }
        if let Some(pipeline) = &self.pipeline {
            for line in pipeline.lines() {
                println!("{line}");
            }
            // One line for scripts to grep: `grep '^pipeline-json: '`.
            let line = serde_json::json!({
                "scenario": self.scenario,
                "rate": self.rate,
                "requests_per_sec": (self.requests_per_sec * 10.0).round() / 10.0,
                "outbox_lag_s": pipeline.outbox_lag_s,
                "consumer_lag_s": pipeline.consumer_lag_s,
                "drain": pipeline.drain,
                "samples": pipeline.samples,
                "note": pipeline.note,
            });
            println!("pipeline-json: {line}");
        }
    }
}
