//! `payfn reconcile [--date D] [--repair]`: recomputes every settlement row
//! of the last `[reconcile] days` days (or of day `D`) from each shard's
//! captures and refunds, prints the differences, and exits 0 when there
//! are none, 1 when drift remains (see `reconcile.rs` for what is compared).
//!
//! `--repair` re-publishes the outbox rows of unsettled captures and
//! refunds (the relay sends them again, the settlement consumer applies
//! each once), waits up to `--wait` for settlement to catch up, and prints
//! the check again. A settlement row that differs from the captures and
//! refunds it counted is never repaired: replaying events cannot change it,
//! and overwriting a total would hide the bug or the change that caused it.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail};
use clap::Args;

use super::AppArgs;
use crate::reconcile::{self, Checker, Day, Mode, ShardReport};
use crate::shards::ShardSet;

#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    app: AppArgs,
    /// Check this UTC day (YYYY-MM-DD) instead of the last `[reconcile]
    /// days` days. Days older than the processed-events retention are
    /// compared on totals only.
    #[arg(long)]
    date: Option<String>,
    /// Re-publish the events of captures and refunds unsettled past the
    /// grace period, then wait for settlement to apply them.
    #[arg(long)]
    repair: bool,
    /// With --repair: how long to wait for settlement to catch up.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    wait: Duration,
}

pub async fn run(args: ReconcileArgs) -> anyhow::Result<()> {
    let (config, _) = args.app.runtime_config()?;
    let shards = ShardSet::open(&config.shards, &config.routing, &args.app.state_dir()).await?;
    let checker = Checker::new(&config);
    let days = |now| match &args.date {
        Some(date) => checker.day(date, now).map(|d| vec![d]).map_err(|e| anyhow!(e)),
        None => Ok(checker.recent_days(config.reconcile.days, now)),
    };
    let check = |days: Vec<Day>, now| {
        let (shards, checker) = (&shards, &checker);
        async move {
            let mut reports = Vec::new();
            for shard in shards.iter() {
                let report = checker
                    .check(shard, &days, now)
                    .await
                    .map_err(|e| anyhow!("shard `{}`: cannot reconcile: {e:?}", shard.name))?;
                reports.push(report);
            }
            anyhow::Ok(reports)
        }
    };

    let now = SystemTime::now();
    let scope = days(now)?;
    eprintln!("{}", describe(&scope, checker.grace(), &config.reconcile.consumer));
    let mut reports = check(scope, now).await?;
    print!("{}", render(&reports));

    if args.repair && reports.iter().any(|r| r.unsettled_count > 0) {
        let mut republished = 0;
        for (shard, report) in shards.iter().zip(&reports) {
            let ids: Vec<String> = report
                .unsettled
                .iter()
                .filter(|u| u.outbox != reconcile::OutboxState::Missing)
                .map(|u| u.event_id.clone())
                .collect();
            republished += reconcile::republish(shard, &ids)
                .await
                .map_err(|e| anyhow!("shard `{}`: cannot re-publish: {e:?}", shard.name))?;
            let missing =
                report.unsettled.iter().filter(|u| u.outbox == reconcile::OutboxState::Missing).count();
            if missing > 0 {
                eprintln!(
                    "shard `{}`: {missing} unsettled events have no outbox row any more (purged by the retention): \
                     they cannot be re-published",
                    shard.name
                );
            }
        }
        eprintln!(
            "re-published {republished} events; waiting up to {} for settlement to apply them",
            humantime::format_duration(args.wait)
        );
        let deadline = Instant::now() + args.wait;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = SystemTime::now();
            reports = check(days(now)?, now).await?;
            if reports.iter().all(|r| r.unsettled_count == 0) || Instant::now() >= deadline {
                break;
            }
        }
        println!("\nafter the repair:");
        print!("{}", render(&reports));
    }

    let mismatched: usize = reports.iter().map(|r| r.mismatches.len()).sum();
    let unsettled: i64 = reports.iter().map(|r| r.unsettled_count).sum();
    if mismatched == 0 && unsettled == 0 {
        println!("no settlement drift");
        return Ok(());
    }
    let mut why = Vec::new();
    if mismatched > 0 {
        why.push(format!(
            "{mismatched} settlement rows differ from the captures and refunds they count: replaying events \
             cannot repair them (each event counts once); this is a bug or a change made outside the steps, \
             investigate before correcting anything"
        ));
    }
    if unsettled > 0 {
        why.push(format!(
            "{unsettled} captures and refunds are not settled past the grace period{}",
            if args.repair {
                ": re-published, not yet applied (is a host with the relay and the settlement consumer running?)"
            } else {
                ": `payfn reconcile --repair` re-publishes their events"
            }
        ));
    }
    bail!("settlement drift remains: {}", why.join("; "))
}

/// What is checked, for stderr.
fn describe(days: &[Day], grace: Duration, consumer: &str) -> String {
    let list = |mode| days.iter().filter(|d| d.mode == mode).map(|d| d.day.as_str()).collect::<Vec<_>>();
    let mut text = String::new();
    let exact = list(Mode::Exact);
    if !exact.is_empty() {
        let _ = write!(
            text,
            "reconciling {} against the captures and refunds consumer `{consumer}` processed \
             (unsettled: older than {})",
            exact.join(", "),
            humantime::format_duration(grace)
        );
    }
    let totals = list(Mode::TotalsOnly);
    if !totals.is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        let _ = write!(
            text,
            "reconciling {} on totals only: older than the processed-events retention, so every capture and \
             refund of the day counts and unsettled ones cannot be told apart",
            totals.join(", ")
        );
    }
    text
}

/// The differences of `reports` as two tables (mismatches, unsettled).
fn render(reports: &[ShardReport]) -> String {
    let mut out = String::new();
    let mut mismatches = vec![row(&[
        "SHARD",
        "MERCHANT",
        "DAY",
        "CURRENCY",
        "FIELD",
        "EXPECTED",
        "ACTUAL",
        "DIFFERENCE",
        "CHECK",
    ])];
    let mut unsettled = vec![row(&[
        "SHARD",
        "KIND",
        "ID",
        "PAYMENT",
        "MERCHANT",
        "DAY",
        "CURRENCY",
        "AMOUNT",
        "OCCURRED_AT",
        "EVENT",
        "OUTBOX",
    ])];
    for report in reports {
        for m in &report.mismatches {
            for ((field, expected), (_, actual)) in m.expected.fields().into_iter().zip(m.actual.fields()) {
                if expected != actual {
                    mismatches.push(vec![
                        report.shard.clone(),
                        m.merchant_id.to_string(),
                        m.day.clone(),
                        m.currency.clone(),
                        field.to_string(),
                        expected.to_string(),
                        actual.to_string(),
                        format!("{:+}", actual.saturating_sub(expected)),
                        m.mode.as_str().to_string(),
                    ]);
                }
            }
        }
        for u in &report.unsettled {
            unsettled.push(vec![
                report.shard.clone(),
                u.kind.as_str().to_string(),
                u.id.clone(),
                u.payment_id.clone(),
                u.merchant_id.to_string(),
                u.occurred_at.get(..10).unwrap_or_default().to_string(),
                u.currency.clone(),
                u.amount.to_string(),
                u.occurred_at.clone(),
                u.event_id.clone(),
                u.outbox.as_str().to_string(),
            ]);
        }
    }
    if mismatches.len() > 1 {
        out.push_str("settlement rows that differ from the captures and refunds they count:\n");
        out.push_str(&table(&mismatches));
    }
    if unsettled.len() > 1 {
        out.push_str("captures and refunds not settled past the grace period:\n");
        out.push_str(&table(&unsettled));
    }
    for report in reports {
        let listed = i64::try_from(report.unsettled.len()).unwrap_or(i64::MAX);
        if report.unsettled_count > listed {
            let _ = writeln!(
                out,
                "({}: {} more unsettled not listed)",
                report.shard,
                report.unsettled_count - listed
            );
        }
        let _ = writeln!(
            out,
            "{}: {} mismatched rows (amount {}), {} unsettled (amount {})",
            report.shard,
            report.mismatches.len(),
            report.mismatch_amount(),
            report.unsettled_count,
            report.unsettled_amount
        );
    }
    out
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Rows as left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
