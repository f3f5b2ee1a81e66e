//! A copying round in pages: each page is one short read of the source
//! and one short write of the target, paced ([`super::pace`]), so that a
//! merchant with millions of rows moves without a long transaction on
//! either shard (which would hold back PostgreSQL's vacuum and InnoDB's
//! purge) and without taking the shards from their other merchants.
//!
//! Pages are not one snapshot, and need not be: a round copies the rows
//! changed since its watermark, and the next round's watermark is the
//! round's start less the longest transaction, so whatever changed while
//! the pages went by is copied again by the next round. Two things a
//! snapshot gave for free are kept by construction:
//!
//! - no row reaches the target before its payment: refunds and ledger
//!   entries are read with their page of payments ([`Page::WithPayments`]);
//! - a ledger posting is written whole (its replacement deletes the
//!   posting's entries first): a posting belongs to one payment, so it is
//!   never split across pages.
//!
//! A page is a range of an index that finds the merchant's rows in the
//! page key's order ([`Table::changed_page`]), so a round reads each of
//! the merchant's rows once, whatever its size.

use std::time::Instant;

use super::copy::{point_superseded_on, sql_error, write_rows, Copied, Page, Table, TABLES};
use super::pace::MovesConfig;
use crate::bindings::sql::{RowSet, Value};
use crate::shards::{Shard, ShardTx};

/// Rows a payment brings along, about: a captured payment has four ledger
/// entries. A page of payments is the page size over this.
const ROWS_PER_PAYMENT: usize = 5;

/// A round read from `source` page by page: copies `merchant`'s rows
/// changed since `watermark_ms` (0: all) to `target`. `fresh`: the target
/// has none of its rows. `on_page` is told the rows of each page written.
pub async fn copy_round(
    source: &Shard,
    target: &Shard,
    merchant: i64,
    watermark_ms: i64,
    fresh: bool,
    pace: &MovesConfig,
    on_page: &(dyn Fn(u64) + Sync),
) -> anyhow::Result<Copied> {
    let mut round =
        Round { source, target, merchant, watermark_ms, fresh, pace, on_page, copied: Copied::default() };
    for table in &TABLES {
        match table.page {
            Page::By(key) => round.by_key(table, key).await?,
            Page::WithPayments => {}
            Page::Whole => round.whole(table).await?,
        }
    }
    // An outbox row's newer row may have come in a later page.
    point_superseded_on(target, &round.copied.superseded).await?;
    Ok(round.copied)
}

/// One round's reading and writing.
struct Round<'a> {
    source: &'a Shard,
    target: &'a Shard,
    merchant: i64,
    watermark_ms: i64,
    fresh: bool,
    pace: &'a MovesConfig,
    on_page: &'a (dyn Fn(u64) + Sync),
    copied: Copied,
}

impl Round<'_> {
    /// `table` page by page in `key` order (payments with their refunds
    /// and ledger entries).
    async fn by_key(&mut self, table: &'static Table, key: &[&str]) -> anyhow::Result<()> {
        let limit = match table.name {
            "payments" => (self.pace.page_rows / ROWS_PER_PAYMENT).max(1),
            _ => self.pace.page_rows,
        };
        let mut after: Option<Vec<Value>> = None;
        loop {
            self.pace.wait_for_room(&[self.source, self.target]).await;
            let started = Instant::now();
            let (page, last) = self.read_page(table, key, after.as_deref(), limit).await?;
            let full = page.first().is_some_and(|(_, rows)| rows.rows.len() >= limit);
            self.write(page).await?;
            self.pace.rest_after(started.elapsed()).await;
            match last {
                Some(last) if full => after = Some(last),
                _ => return Ok(()),
            }
        }
    }

    /// A table with a few rows per merchant, in one read.
    async fn whole(&mut self, table: &'static Table) -> anyhow::Result<()> {
        self.pace.wait_for_room(&[self.source, self.target]).await;
        let started = Instant::now();
        let (statement, params) = table.changed_rows(self.merchant, self.watermark_ms);
        let mut tx = self.begin_read().await?;
        let rows = query(&mut tx, table, &statement, params).await;
        tx.rollback().await;
        self.write(vec![(table, rows?)]).await?;
        self.pace.rest_after(started.elapsed()).await;
        Ok(())
    }

    /// One page of `table` (and, for payments, their refunds and ledger
    /// entries) in one short read; the page's last key.
    async fn read_page(
        &self,
        table: &'static Table,
        key: &[&str],
        after: Option<&[Value]>,
        limit: usize,
    ) -> anyhow::Result<(Vec<(&'static Table, RowSet)>, Option<Vec<Value>>)> {
        let mut tx = self.begin_read().await?;
        let page = self.read_page_in(&mut tx, table, key, after, limit).await;
        tx.rollback().await;
        page
    }

    async fn read_page_in(
        &self,
        tx: &mut ShardTx,
        table: &'static Table,
        key: &[&str],
        after: Option<&[Value]>,
        limit: usize,
    ) -> anyhow::Result<(Vec<(&'static Table, RowSet)>, Option<Vec<Value>>)> {
        let (statement, params) = table.changed_page(self.merchant, self.watermark_ms, key, after, limit);
        let mut rows = query(tx, table, &statement, params).await?;
        let mut last = None;
        for row in &mut rows.rows {
            last = Some(row.split_off(row.len() - key.len()));
        }
        let ids: Vec<Value> = match table.name {
            "payments" => rows.rows.iter().map(|row| row[0].clone()).collect(),
            _ => Vec::new(),
        };
        let mut page = vec![(table, rows)];
        if !ids.is_empty() {
            for child in TABLES.iter().filter(|t| t.page == Page::WithPayments) {
                let (statement, params) = child.of_payments(self.merchant, self.watermark_ms, &ids);
                page.push((child, query(tx, child, &statement, params).await?));
            }
        }
        Ok((page, last))
    }

    async fn begin_read(&self) -> anyhow::Result<ShardTx> {
        self.source.begin(false).await.map_err(sql_error("opening a read on the source"))
    }

    /// Writes a page to the target (a few transactions at most).
    async fn write(&mut self, page: Vec<(&'static Table, RowSet)>) -> anyhow::Result<()> {
        let written = write_rows(self.target, self.merchant, page, self.fresh).await?;
        self.copied.pages += 1;
        self.copied.rows += written.rows;
        self.copied.superseded.extend(written.superseded);
        (self.on_page)(written.rows);
        Ok(())
    }
}

async fn query(
    tx: &mut ShardTx,
    table: &Table,
    statement: &str,
    params: Vec<Value>,
) -> anyhow::Result<RowSet> {
    tx.scan(statement, params).await.map_err(sql_error(&format!("reading {}", table.name)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::moves::copy::{figures, Measure};

    /// Small pages: every paged table takes several.
    const PACE: MovesConfig = MovesConfig { page_rows: 10, pause: Duration::from_millis(1) };

    fn at(second: u32, milli: u32) -> String {
        format!("2026-12-01T00:{:02}:{:02}.{milli:03}Z", second / 60, second % 60)
    }

    fn ms(when: &str) -> i64 {
        let at = humantime::parse_rfc3339(when).unwrap();
        at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    }

    async fn run(shard: &Shard, statements: &[(String, Vec<Value>)]) {
        let mut tx = shard.begin(true).await.unwrap();
        for (statement, params) in statements {
            tx.execute(statement, params.clone()).await.unwrap_or_else(|e| panic!("{statement}: {e:?}"));
        }
        tx.commit().await.unwrap();
    }

    fn text(t: &str) -> Value {
        Value::Text(t.to_string())
    }

    /// A payment of `merchant` authorized and captured at `when`, with its
    /// postings, events (the authorization's superseded by the capture's),
    /// idempotency record and processed capture (legacy rows without a
    /// merchant for odd payments); every third one refunded.
    fn payment(merchant: i64, n: u32, when: &str) -> Vec<(String, Vec<Value>)> {
        let id = format!("pay_{merchant}_{n}");
        let mut out = vec![(
            "INSERT INTO payments (id, merchant_id, status, amount, captured_amount, refunded_amount, currency, \
             created_at, updated_at, version) VALUES (?, ?, ?, 1000, 1000, ?, 'KRW', ?, ?, 2)"
                .to_string(),
            vec![
                text(&id),
                Value::Int64(merchant),
                text(if n.is_multiple_of(3) { "PARTIALLY_REFUNDED" } else { "CAPTURED" }),
                Value::Int64(if n.is_multiple_of(3) { 300 } else { 0 }),
                text(when),
                text(when),
            ],
        )];
        let mut postings = vec![("authorize", 1000), ("capture", 1000)];
        if n.is_multiple_of(3) {
            postings.push(("refund", 300));
            out.push((
                "INSERT INTO refunds (id, payment_id, merchant_id, amount, created_at) VALUES (?, ?, ?, 300, ?)"
                    .into(),
                vec![text(&format!("rf_{id}")), text(&id), Value::Int64(merchant), text(when)],
            ));
        }
        for (kind, amount) in postings {
            for (account, sign) in [("a", 1), ("b", -1)] {
                out.push((
                    "INSERT INTO ledger_entries (posting_id, kind, payment_id, merchant_id, account, amount, \
                     currency, created_at) VALUES (?, ?, ?, ?, ?, ?, 'KRW', ?)"
                        .into(),
                    vec![
                        text(&format!("pst_{kind}_{id}")),
                        text(kind),
                        text(&id),
                        Value::Int64(merchant),
                        text(account),
                        Value::Int64(sign * amount),
                        text(when),
                    ],
                ));
            }
        }
        for kind in ["authorized", "captured"] {
            out.push((
                "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at, \
                 published, published_at) VALUES (?, ?, ?, ?, '{}', ?, 1, ?)"
                    .into(),
                vec![
                    text(&format!("evt_{kind}_{id}")),
                    text(&id),
                    Value::Int64(merchant),
                    text(kind),
                    text(when),
                    text(when),
                ],
            ));
        }
        out.push((
            "UPDATE outbox SET superseded_by = (SELECT id FROM outbox WHERE event_id = ?) WHERE event_id = ?"
                .into(),
            vec![text(&format!("evt_captured_{id}")), text(&format!("evt_authorized_{id}"))],
        ));
        out.push((
            "INSERT INTO idempotency_keys (merchant_id, idempotency_key, fingerprint, status, body, created_at_ms) \
             VALUES (?, ?, 'f', 201, '{}', ?)"
                .into(),
            vec![Value::Int64(merchant), text(&format!("key_{id}")), Value::Int64(ms(when))],
        ));
        out.push((
            "INSERT INTO processed_events (consumer, event_id, processed_at, merchant_id) VALUES ('settlement', ?, ?, ?)"
                .into(),
            vec![
                text(&format!("evt_captured_{id}")),
                text(when),
                if !n.is_multiple_of(2) { Value::Null } else { Value::Int64(merchant) },
            ],
        ));
        out
    }

    /// Settlements, a failed event, and an event first of all, so that
    /// the pairs of events (one superseding the other) straddle the
    /// outbox's pages.
    fn rest_of_merchant(merchant: i64) -> Vec<(String, Vec<Value>)> {
        let mut out = vec![(
            "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at, \
             published, published_at) VALUES (?, 'none', ?, 'first', '{}', ?, 1, ?)"
                .to_string(),
            vec![
                text(&format!("evt_first_{merchant}")),
                Value::Int64(merchant),
                text(&at(0, 0)),
                text(&at(0, 0)),
            ],
        )];
        for day in ["2026-11-30", "2026-12-01"] {
            out.push((
                "INSERT INTO settlements (merchant_id, day, currency, gross_captured, capture_count, net, updated_at) \
                 VALUES (?, ?, 'KRW', 5000, 5, 4900, ?)"
                    .into(),
                vec![Value::Int64(merchant), text(day), text(&at(0, 0))],
            ));
        }
        out.push((
            "INSERT INTO failed_events (consumer, source_topic, source_partition, source_offset, merchant_id, \
             record_value, headers, error, dead_letter_topic, dead_letter_error, failed_at) \
             VALUES ('settlement', 'payments', 0, ?, ?, X'00', '[]', 'boom', '', '', ?)"
                .into(),
            vec![Value::Int64(merchant), Value::Int64(merchant), text(&at(0, 0))],
        ));
        out
    }

    /// Every outbox row's event id and the event id it is superseded by.
    async fn pointers(shard: &Shard, merchant: i64) -> Vec<(String, String)> {
        let mut tx = shard.begin(false).await.unwrap();
        let rows = tx
            .query(
                "SELECT t.event_id, s.event_id FROM outbox t JOIN outbox s ON s.id = t.superseded_by \
                 WHERE t.merchant_id = ? ORDER BY t.event_id",
                vec![Value::Int64(merchant)],
            )
            .await
            .unwrap();
        tx.rollback().await;
        rows.rows.iter().map(|r| (format!("{:?}", r[0]), format!("{:?}", r[1]))).collect()
    }

    /// A round in pages copies the merchant whole (every table's count and
    /// sums, the outbox's pointers across pages) and nothing of another
    /// merchant; a later round copies what changed since its watermark.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_in_pages_copies_the_merchant_whole_and_nothing_else() {
        let (_s, source) = crate::shards::test_shard().await;
        let (_t, target) = crate::shards::test_shard().await;
        let mut seed = rest_of_merchant(7);
        seed.extend(rest_of_merchant(8));
        for n in 0..23 {
            seed.extend(payment(7, n, &at(n, 0)));
        }
        for n in 0..5 {
            seed.extend(payment(8, n, &at(n, 0)));
        }
        run(&source, &seed).await;
        let source_of_8 = figures(&source, 8, Measure::Sums).await.unwrap();

        let copied = copy_round(&source, &target, 7, 0, true, &PACE, &|_| {}).await.unwrap();
        assert_eq!(
            figures(&target, 7, Measure::Sums).await.unwrap(),
            figures(&source, 7, Measure::Sums).await.unwrap()
        );
        let expected_rows = 23 * (1 + 4 + 2 + 1 + 1) + 8 * (1 + 2) + 1 + 2 + 1;
        assert_eq!(copied.rows, expected_rows as u64);
        // 12 pages of 2 payments, 5 of the outbox, 3 of idempotency
        // records and of processed events, and the two whole tables.
        assert_eq!(copied.pages, 12 + 5 + 3 + 3 + 2, "{copied:?}");
        assert_eq!(pointers(&target, 7).await, pointers(&source, 7).await);
        assert_eq!(pointers(&target, 7).await.len(), 23);
        let nothing = figures(&target, 8, Measure::Sums).await.unwrap();
        assert!(nothing.iter().all(|(_, f)| f.starts_with("[[Value::Int64(0)")), "{nothing:?}");
        assert_eq!(figures(&source, 8, Measure::Sums).await.unwrap(), source_of_8);

        // Later: new payments, one captured again (a new posting), an
        // event still pending.
        let mut later = Vec::new();
        for n in 23..30 {
            later.extend(payment(7, n, &at(100 + n, 0)));
        }
        later.push((
            "UPDATE payments SET refunded_amount = 500, version = 3, updated_at = ? WHERE id = 'pay_7_3'"
                .into(),
            vec![text(&at(140, 0))],
        ));
        for (account, sign) in [("a", 1), ("b", -1)] {
            later.push((
                "INSERT INTO ledger_entries (posting_id, kind, payment_id, merchant_id, account, amount, currency, \
                 created_at) VALUES ('pst_late', 'refund', 'pay_7_3', 7, ?, ?, 'KRW', ?)"
                    .into(),
                vec![text(account), Value::Int64(sign * 200), text(&at(140, 0))],
            ));
        }
        later.push((
            "INSERT INTO outbox (event_id, aggregate_id, merchant_id, event_type, payload, created_at) \
             VALUES ('evt_pending', 'pay_7_3', 7, 'refunded', '{}', ?)"
                .into(),
            vec![text(&at(140, 0))],
        ));
        run(&source, &later).await;
        let copied = copy_round(&source, &target, 7, ms(&at(100, 0)), false, &PACE, &|_| {}).await.unwrap();
        assert_eq!(
            figures(&target, 7, Measure::Sums).await.unwrap(),
            figures(&source, 7, Measure::Sums).await.unwrap()
        );
        assert_eq!(pointers(&target, 7).await, pointers(&source, 7).await);
        // Only what changed: 7 new payments with their rows (61), the one
        // refunded again with its new posting (3), the pending event.
        assert_eq!(copied.rows, 7 * 9 + 2 * 3 + 3 + 1, "{copied:?}");
    }
}
