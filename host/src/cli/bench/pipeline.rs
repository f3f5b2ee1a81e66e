//! The asynchronous half while `payfn bench` runs: the outbox relay and the
//! settlement consumer, sampled from the host's `/metrics` on a task of
//! their own, so a peak bought by leaving the pipeline behind shows.
//!
//! Per scrape (every `--pipeline-interval`, 250 ms by default): the outbox
//! lag (`payfn_outbox_oldest_pending_age_seconds`, max over shards) and
//! pending rows (`payfn_outbox_pending`, summed), the consumer group's lag
//! in time (`payfn_kafka_consumer_lag_seconds`, max over partitions) and in
//! records (`payfn_kafka_consumer_lag`, summed). The host reads all of them
//! from the shards and the broker at scrape time, so one host's `/metrics`
//! shows the whole pipeline. After the load, the sampler goes on until a
//! scrape shows nothing pending and nothing unhandled (the drain), or the
//! cap passes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one `/metrics` text says about the pipeline; `None`: not exported.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Figures {
    /// Outbox rows not yet published nor dead-lettered, all shards.
    pub outbox_pending: Option<i64>,
    /// Age of the oldest of them, max over shards (0: none).
    pub outbox_lag_s: Option<f64>,
    /// Records the group has not committed past, all partitions.
    pub consumer_records: Option<i64>,
    /// Age of the oldest of them, max over partitions (0: caught up).
    pub consumer_lag_s: Option<f64>,
}

impl Figures {
    /// Reads the pipeline's gauges out of a Prometheus text exposition;
    /// consumer series only of `group`.
    pub fn parse(text: &str, group: &str) -> Self {
        let mut f = Figures::default();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let (name, labels, rest) = match line.find('{') {
                Some(open) => match line[open..].find('}') {
                    Some(close) => (&line[..open], &line[open + 1..open + close], &line[open + close + 1..]),
                    None => continue,
                },
                None => match line.split_once(' ') {
                    Some((name, rest)) => (name, "", rest),
                    None => continue,
                },
            };
            let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let of_group = || label(labels, "group") == Some(group);
            match name {
                "payfn_outbox_pending" => add(&mut f.outbox_pending, value as i64),
                "payfn_outbox_oldest_pending_age_seconds" => max(&mut f.outbox_lag_s, value),
                "payfn_kafka_consumer_lag" if of_group() => add(&mut f.consumer_records, value as i64),
                "payfn_kafka_consumer_lag_seconds" if of_group() => max(&mut f.consumer_lag_s, value),
                _ => {}
            }
        }
        f
    }

    /// Nothing pending, nothing unhandled: every figure the host exports is 0.
    pub fn drained(&self) -> bool {
        self.outbox_pending.unwrap_or(0) == 0 && self.consumer_records.unwrap_or(0) == 0
    }

    /// Whether this host exports anything of the pipeline at all.
    fn any(&self) -> bool {
        self.outbox_pending.is_some() || self.consumer_records.is_some()
    }
}

fn add(total: &mut Option<i64>, value: i64) {
    *total = Some(total.unwrap_or(0) + value);
}

fn max(highest: &mut Option<f64>, value: f64) {
    *highest = Some(highest.map_or(value, |h| h.max(value)));
}

/// The value of label `name` in `a="x",b="y"` (values without quotes or commas).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// One scrape.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When the request was sent: the host reads the figures right after.
    pub at: Instant,
    /// `None`: the scrape failed.
    pub figures: Option<Figures>,
    pub took: Duration,
}

/// p50, p99 and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// Nearest rank: the smallest value with at least q of them at or
    /// below it. `None` without values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let at =
            |q: f64| round3(sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]);
        Some(Quantiles { p50: at(0.50), p99: at(0.99), max: round3(sorted[sorted.len() - 1]) })
    }
}

/// To the thousandth (of a second, a millisecond): what a scrape resolves.
fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// How the pipeline emptied after the load.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Drain {
    pub drained: bool,
    /// From the end of the load to the first of two scrapes in a row that
    /// found it empty, or to the cap.
    pub seconds: f64,
    /// What the last scrape found (0 when drained).
    pub outbox_pending: Option<i64>,
    pub consumer_lag_records: Option<i64>,
    /// The highest lags seen after the load (a pipeline behind keeps ageing).
    pub max_outbox_lag_s: Option<f64>,
    pub max_consumer_lag_s: Option<f64>,
}

impl Drain {
    /// The drain as of `now`, from the samples taken since `load_end`:
    /// `Some` once two scrapes in a row found the pipeline empty (drained at
    /// the first of them), or once `cap` passed (not drained, with what the
    /// last scrape found); `None` while it may still drain.
    ///
    /// Why two: one scrape reads the outbox, then the consumer's position,
    /// and an event can slip between the reads (a record handled meanwhile
    /// writes its `settlement.updated` row after the outbox was read; a row
    /// published meanwhile is a record after the position was read). Over
    /// two scrapes a relay interval apart it shows in one or the other.
    pub fn of(samples: &[Sample], load_end: Instant, cap: Duration, now: Instant) -> Option<Self> {
        let after: Vec<(Instant, Figures)> =
            samples.iter().filter(|s| s.at >= load_end).filter_map(|s| Some((s.at, s.figures?))).collect();
        let highest = |until: Option<Instant>, pick: fn(&Figures) -> Option<f64>| {
            after
                .iter()
                .filter(|(at, _)| until.is_none_or(|u| *at <= u))
                .filter_map(|(_, f)| pick(f))
                .reduce(f64::max)
                .map(round3)
        };
        let lag = |until: Option<Instant>| {
            (highest(until, |f| f.outbox_lag_s), highest(until, |f| f.consumer_lag_s))
        };
        let empty =
            after.windows(2).find(|w| w[0].0 <= load_end + cap && w[0].1.drained() && w[1].1.drained());
        if let Some([(at, f), _]) = empty {
            let (max_outbox_lag_s, max_consumer_lag_s) = lag(Some(*at));
            return Some(Drain {
                drained: true,
                seconds: round3(at.duration_since(load_end).as_secs_f64()),
                outbox_pending: f.outbox_pending,
                consumer_lag_records: f.consumer_records,
                max_outbox_lag_s,
                max_consumer_lag_s,
            });
        }
        if now < load_end + cap {
            return None;
        }
        let last = after.last().map(|(_, f)| *f).unwrap_or_default();
        let (max_outbox_lag_s, max_consumer_lag_s) = lag(None);
        Some(Drain {
            drained: false,
            seconds: cap.as_secs_f64(),
            outbox_pending: last.outbox_pending,
            consumer_lag_records: last.consumer_records,
            max_outbox_lag_s,
            max_consumer_lag_s,
        })
    }
}

/// The pipeline over one run, as reported.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PipelineSummary {
    pub metrics_url: String,
    pub consumer_group: String,
    pub interval_ms: u64,
    /// Scrapes sent while the load ran, and how many of them failed.
    pub samples: usize,
    pub failed_scrapes: usize,
    /// How long a scrape took (what sampling costs the host, roughly).
    pub scrape_ms: Option<Quantiles>,
    /// Over the samples taken while the load ran.
    pub outbox_lag_s: Option<Quantiles>,
    pub outbox_pending: Option<Quantiles>,
    pub consumer_lag_s: Option<Quantiles>,
    pub consumer_lag_records: Option<Quantiles>,
    /// `None`: not waited for (`--drain-timeout 0s`, or nothing to watch).
    pub drain: Option<Drain>,
    /// Why figures are missing, when they are.
    pub note: Option<String>,
}

impl PipelineSummary {
    /// The summary of `samples`, the load having run from `load_start` to
    /// `load_end`.
    pub fn of(
        sampler: &Sampler,
        samples: &[Sample],
        load_start: Instant,
        load_end: Instant,
        drain: Option<Drain>,
    ) -> Self {
        let during: Vec<&Sample> = samples.iter().filter(|s| s.at >= load_start && s.at < load_end).collect();
        let figures: Vec<Figures> = during.iter().filter_map(|s| s.figures).collect();
        let series = |pick: &dyn Fn(&Figures) -> Option<f64>| {
            Quantiles::of(&figures.iter().filter_map(pick).collect::<Vec<_>>())
        };
        let took: Vec<f64> = during.iter().map(|s| s.took.as_secs_f64() * 1000.0).collect();
        let note = if samples.iter().all(|s| s.figures.is_none()) {
            Some(format!("no scrape of {} answered", sampler.url))
        } else if !samples.iter().filter_map(|s| s.figures).any(|f| f.any()) {
            Some(format!("{} exports no outbox or consumer figures (not a payfn host?)", sampler.url))
        } else if !samples.iter().filter_map(|s| s.figures).any(|f| f.consumer_records.is_some()) {
            Some(format!("no consumer group `{}` in {}", sampler.group, sampler.url))
        } else {
            None
        };
        PipelineSummary {
            metrics_url: sampler.url.clone(),
            consumer_group: sampler.group.clone(),
            interval_ms: sampler.interval.as_millis() as u64,
            samples: during.len(),
            failed_scrapes: during.iter().filter(|s| s.figures.is_none()).count(),
            scrape_ms: Quantiles::of(&took),
            outbox_lag_s: series(&|f| f.outbox_lag_s),
            outbox_pending: series(&|f| f.outbox_pending.map(|n| n as f64)),
            consumer_lag_s: series(&|f| f.consumer_lag_s),
            consumer_lag_records: series(&|f| f.consumer_records.map(|n| n as f64)),
            drain,
            note,
        }
    }

    /// The lines of the human-readable table.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "  pipeline: {} scrapes of {} during the load, every {} ms{}{}",
            self.samples,
            self.metrics_url,
            self.interval_ms,
            match self.failed_scrapes {
                0 => String::new(),
                n => format!(", {n} failed"),
            },
            self.scrape_ms.map_or(String::new(), |q| format!(
                "; a scrape took p50 {:.1} ms, max {:.1} ms",
                q.p50, q.max
            )),
        )];
        lines.push(format!("  {:<22} {:>9} {:>9} {:>9}", "", "p50", "p99", "max"));
        let mut row = |name: &str, q: Option<Quantiles>, decimals: usize| {
            if let Some(q) = q {
                lines.push(format!(
                    "  {:<22} {:>9.*} {:>9.*} {:>9.*}",
                    name, decimals, q.p50, decimals, q.p99, decimals, q.max
                ));
            }
        };
        row("outbox lag s", self.outbox_lag_s, 3);
        row("outbox pending", self.outbox_pending, 0);
        row("consumer lag s", self.consumer_lag_s, 3);
        row("consumer lag records", self.consumer_lag_records, 0);
        let count = |n: Option<i64>| n.map_or("?".to_string(), |n| n.to_string());
        let secs = |s: Option<f64>| s.map_or("?".to_string(), |s| format!("{s:.3} s"));
        match &self.drain {
            Some(d) if d.drained => lines.push(format!(
                "  drained {:.2} s after the load (outbox 0 pending, consumer 0 behind); highest lag meanwhile: outbox {}, consumer {}",
                d.seconds,
                secs(d.max_outbox_lag_s),
                secs(d.max_consumer_lag_s)
            )),
            Some(d) => lines.push(format!(
                "  not drained after {:.0} s: outbox {} pending, consumer {} records behind; highest lag meanwhile: outbox {}, consumer {}",
                d.seconds,
                count(d.outbox_pending),
                count(d.consumer_lag_records),
                secs(d.max_outbox_lag_s),
                secs(d.max_consumer_lag_s)
            )),
            None => lines.push("  drain: not waited for".to_string()),
        }
        if let Some(note) = &self.note {
            lines.push(format!("  pipeline note: {note}"));
        }
        lines
    }
}

/// Scrapes `/metrics` on a task of its own until stopped.
pub struct Sampler {
    url: String,
    group: String,
    interval: Duration,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Starts scraping `url` now, then every `interval`.
    pub fn start(url: String, group: String, interval: Duration) -> anyhow::Result<Self> {
        // A client of its own: never a connection of the load's pool.
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (url, group, samples) = (url.clone(), group.clone(), samples.clone());
            async move {
                let mut tick = tokio::time::interval(interval);
                // A slow scrape delays the next one; never a burst to catch up.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let at = Instant::now();
                    let text = match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => r.text().await.ok(),
                        _ => None,
                    };
                    let sample =
                        Sample { at, figures: text.map(|t| Figures::parse(&t, &group)), took: at.elapsed() };
                    samples.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
                }
            }
        });
        Ok(Sampler { url, group, interval, samples, task })
    }

    fn snapshot(&self) -> Vec<Sample> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until the scrapes after `load_end` find the pipeline empty
    /// ([`Drain::of`]), or `cap` passes; `None` right away when there is nothing to watch (no
    /// scrape found any pipeline figure).
    pub async fn drain(&self, load_end: Instant, cap: Duration) -> Option<Drain> {
        loop {
            let samples = self.snapshot();
            let seen = samples.iter().filter_map(|s| s.figures).any(|f| f.any());
            // Until the first scrape after the load has answered, keep waiting.
            let answered = samples.iter().any(|s| s.at >= load_end);
            if answered && !seen {
                return None;
            }
            if let Some(drain) = Drain::of(&samples, load_end, cap, Instant::now()) {
                return seen.then_some(drain);
            }
            tokio::time::sleep(self.interval.min(Duration::from_millis(100))).await;
        }
    }

    /// Stops scraping; every sample taken.
    pub fn stop(&self) -> Vec<Sample> {
        self.task.abort();
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP payfn_outbox_pending Outbox rows not yet published, per shard.
# TYPE payfn_outbox_pending gauge
payfn_outbox_pending{shard="shard-1"} 12
payfn_outbox_pending{shard="shard-2"} 30
# TYPE payfn_outbox_oldest_pending_age_seconds gauge
payfn_outbox_oldest_pending_age_seconds{shard="shard-1"} 0.25
payfn_outbox_oldest_pending_age_seconds{shard="shard-2"} 1.5
payfn_kafka_consumer_lag{group="settlement",topic="payments",partition="0"} 4
payfn_kafka_consumer_lag{group="settlement",topic="payments",partition="1"} 5
payfn_kafka_consumer_lag{group="audit",topic="payments",partition="0"} 900
payfn_kafka_consumer_lag_seconds{group="settlement",topic="payments",partition="0"} 0.0
payfn_kafka_consumer_lag_seconds{group="settlement",topic="payments",partition="1"} 2.75
payfn_kafka_consumer_lag_seconds{group="audit",topic="payments",partition="0"} 99.0
payfn_kafka_consumer_lag_total{group="settlement"} 1000
payfn_loaded_versions 7
# EOF
"#;

    #[test]
    fn reads_the_pipeline_gauges_of_one_group() {
        let f = Figures::parse(METRICS, "settlement");
        assert_eq!(
            f,
            Figures {
                outbox_pending: Some(42),
                outbox_lag_s: Some(1.5),
                consumer_records: Some(9),
                consumer_lag_s: Some(2.75),
            }
        );
        assert!(!f.drained());
        let none = Figures::parse("payfn_loaded_versions 7\nok", "settlement");
        assert_eq!(none, Figures::default());
        assert!(!none.any());
        // Another group's backlog is not the settlement consumer's.
        let other = Figures::parse(METRICS, "nobody");
        assert_eq!((other.consumer_records, other.consumer_lag_s), (None, None));
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        let q = Quantiles::of(&values).unwrap();
        assert_eq!(q, Quantiles { p50: 100.0, p99: 198.0, max: 200.0 });
        assert_eq!(Quantiles::of(&[3.0]), Some(Quantiles { p50: 3.0, p99: 3.0, max: 3.0 }));
        // Order does not matter; max >= p99 >= p50.
        let q = Quantiles::of(&[0.5, 0.0, 9.0, 0.25]).unwrap();
        assert_eq!(q, Quantiles { p50: 0.25, p99: 9.0, max: 9.0 });
        assert_eq!(Quantiles::of(&[]), None);
    }

    fn sample(t0: Instant, ms: u64, pending: i64, records: i64, lag: f64) -> Sample {
        Sample {
            at: t0 + Duration::from_millis(ms),
            figures: Some(Figures {
                outbox_pending: Some(pending),
                outbox_lag_s: Some(if pending > 0 { lag } else { 0.0 }),
                consumer_records: Some(records),
                consumer_lag_s: Some(if records > 0 { lag } else { 0.0 }),
            }),
            took: Duration::from_millis(2),
        }
    }

    #[test]
    fn the_drain_ends_at_the_first_empty_scrape_after_the_load() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(10);
        let cap = Duration::from_secs(120);
        let mut samples = vec![
            // During the load it was empty: that is not the drain.
            sample(t0, 9_000, 0, 0, 0.0),
            sample(t0, 9_250, 0, 0, 0.0),
            sample(t0, 10_000, 50, 20, 0.4),
            sample(t0, 10_250, 0, 20, 0.7),
            // Empty once, then an event in flight shows: not drained yet.
            sample(t0, 10_500, 0, 0, 0.0),
            sample(t0, 10_750, 1, 0, 0.1),
        ];
        assert_eq!(Drain::of(&samples, end, cap, t0 + Duration::from_secs(11)), None);
        // Empty twice in a row: drained at the first of the two.
        samples.push(sample(t0, 11_000, 0, 0, 0.0));
        samples.push(Sample { at: t0 + Duration::from_millis(11_250), figures: None, took: Duration::ZERO });
        samples.push(sample(t0, 11_500, 0, 0, 0.0));
        let drain = Drain::of(&samples, end, cap, t0 + Duration::from_secs(12)).unwrap();
        assert!(drain.drained);
        assert!((drain.seconds - 1.0).abs() < 1e-9, "{drain:?}");
        assert_eq!((drain.outbox_pending, drain.consumer_lag_records), (Some(0), Some(0)));
        // The highest lag before it emptied.
        assert_eq!((drain.max_outbox_lag_s, drain.max_consumer_lag_s), (Some(0.4), Some(0.7)));

        // Still behind, cap not reached: keep waiting.
        let behind = &samples[..4];
        assert_eq!(Drain::of(behind, end, cap, t0 + Duration::from_secs(20)), None);
        // Past the cap: not drained, with what the last scrape found.
        let late = Drain::of(behind, end, cap, end + cap).unwrap();
        assert!(!late.drained);
        assert_eq!(late.seconds, 120.0);
        assert_eq!((late.outbox_pending, late.consumer_lag_records), (Some(0), Some(20)));
        assert_eq!((late.max_outbox_lag_s, late.max_consumer_lag_s), (Some(0.4), Some(0.7)));
        // A failed scrape counts for nothing.
        let failed = [Sample { at: end, figures: None, took: Duration::ZERO }];
        assert_eq!(Drain::of(&failed, end, cap, end + Duration::from_secs(1)), None);
    }
}
