//! Copying one merchant's rows from one shard to another, checking the
//! copy, and deleting a side's rows: the data half of a move.
//!
//! Every table a merchant has rows in is listed in [`TABLES`], with how its
//! changed rows are found (a time column the steps write) and how a row is
//! written so that writing it again is harmless (an upsert on its key; the
//! ledger, which has no natural key, by replacing whole postings). A round
//! copies the rows changed since a watermark, so the bulk of a merchant
//! goes across while it is served and the cut-over copies only what the
//! last seconds changed. Outbox rows are copied in id order, so the new
//! shard's ids keep their order.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::bindings::sql::{Dialect, Error as SqlError, RowSet, Value};
use crate::shards::{Shard, ShardTx};

use super::pace::MovesConfig;

/// Rows per INSERT (the widest table has 14 columns: well under every
/// dialect's limit on parameters).
const ROWS_PER_STATEMENT: usize = 200;
/// Rows per write transaction on the target (on SQLite the shard's writer
/// is held that long: short, so other merchants' requests go on).
const ROWS_PER_TRANSACTION: usize = 2_000;
/// Rows per DELETE when a side's rows are removed.
const DELETE_CHUNK: usize = 2_000;
/// Rows of a verified round remembered for the freeze, at most (a few
/// seconds of a busy merchant's changes: tens of MiB).
const MAX_REMEMBERED: usize = 200_000;

/// How a table's rows are written again without harm.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// An upsert on these key columns.
    Upsert(&'static [&'static str]),
    /// Ledger entries: the target's entries of each copied posting are
    /// replaced by the source's (a posting is written whole, in one
    /// statement, so its entries travel together).
    ReplacePostings,
}

/// How a copying round pages through a table ([`super::pages`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Page {
    /// In the order of these columns: unique together, never changed, and
    /// the order of an index that finds the merchant's rows, so a page is
    /// one range of it.
    By(&'static [&'static str]),
    /// With the page of payments they belong to: a payment's refunds and
    /// ledger postings travel with it, so a posting is never split across
    /// pages and no row reaches the target before its payment.
    WithPayments,
    /// Whole: a few rows per merchant (one per day and currency, or per
    /// failed event).
    Whole,
}

/// One table a merchant has rows in.
pub struct Table {
    pub name: &'static str,
    /// Copied as they are (the surrogate `id` of the ledger, the outbox and
    /// failed events is the target's own).
    columns: &'static [&'static str],
    write: Write,
    /// Rows changed at or after the watermark (`?`: RFC 3339 text, or
    /// epoch milliseconds for `idempotency_keys`; `{m}`: the merchant id),
    /// besides the merchant, the table being `t`. Each is served by an
    /// index, so the last rounds and the freeze read what the last seconds
    /// changed, not the merchant's whole history.
    changed: &'static str,
    watermark_is_ms: bool,
    /// `changed` finds the rows itself, through an index of every
    /// merchant's rows by time (or, for the ledger, through the changed
    /// payments): the merchant filter is only checked, so the planner does
    /// not walk the merchant's rows instead.
    found_by_time: bool,
    /// Compared between the sides after the copy.
    sums: &'static [&'static str],
    pub(super) page: Page,
}

/// In foreign-key order: payments before what references them.
pub const TABLES: [Table; 8] = [
    Table {
        name: "payments",
        columns: &[
            "id",
            "merchant_id",
            "status",
            "amount",
            "captured_amount",
            "refunded_amount",
            "currency",
            "order_id",
            "metadata",
            "created_at",
            "updated_at",
            "version",
            "captured_at",
            "capture_event_id",
        ],
        write: Write::Upsert(&["id"]),
        // Through `payments_by_merchant` (merchant_id, created_at), each of
        // the merchant's payments checked: no index on `updated_at`, which
        // every capture, refund and void would update (ARCHITECTURE.md).
        changed: "t.updated_at >= ?",
        watermark_is_ms: false,
        found_by_time: false,
        sums: &["amount", "captured_amount", "refunded_amount", "version"],
        page: Page::By(&["created_at", "id"]),
    },
    Table {
        name: "refunds",
        columns: &["id", "payment_id", "merchant_id", "amount", "reason", "created_at", "event_id"],
        write: Write::Upsert(&["id"]),
        // `refunds_by_merchant` (merchant_id, created_at).
        changed: "t.created_at >= ?",
        watermark_is_ms: false,
        found_by_time: false,
        sums: &["amount"],
        page: Page::WithPayments,
    },
    Table {
        name: "ledger_entries",
        columns: &[
            "posting_id",
            "kind",
            "payment_id",
            "merchant_id",
            "account",
            "amount",
            "currency",
            "created_at",
        ],
        write: Write::ReplacePostings,
        // A posting's entries carry its payment's `updated_at` of the same
        // write (functions/payments ledger.rs), which only grows: entries
        // written since the watermark belong to payments changed since it.
        // Found through them (`ledger_by_payment`), not by walking the
        // merchant's whole ledger.
        changed:
            "t.payment_id IN (SELECT p.id FROM payments p WHERE p.merchant_id = {m} AND p.updated_at >= ?) \
                  AND t.created_at >= ?",
        watermark_is_ms: false,
        found_by_time: true,
        sums: &["amount", "CASE WHEN amount > 0 THEN amount ELSE 0 END"],
        page: Page::WithPayments,
    },
    Table {
        name: "outbox",
        columns: &[
            "event_id",
            "aggregate_id",
            "merchant_id",
            "event_type",
            "payload",
            "created_at",
            "published",
            "published_at",
            "retry_count",
            "last_retry_at",
            "next_attempt_at_ms",
            "last_error",
            "dead_lettered",
            "traceparent",
        ],
        write: Write::Upsert(&["event_id"]),
        // A pending row (dead-lettered ones included) may change any time;
        // a published one changed last when it was published, which is at
        // or after it was written (the relay's update marks nothing else).
        // `outbox_pending` and `outbox_published_at` serve the two halves.
        changed: "(t.published = 0 OR \
                  (t.published = 1 AND t.dead_lettered IN (0, 1) AND t.published_at >= ?))",
        watermark_is_ms: false,
        found_by_time: true,
        sums: &["published", "dead_lettered", "retry_count"],
        page: Page::By(&["id"]),
    },
    Table {
        name: "idempotency_keys",
        columns: &["merchant_id", "idempotency_key", "fingerprint", "status", "body", "created_at_ms"],
        write: Write::Upsert(&["merchant_id", "idempotency_key"]),
        // `idempotency_keys_by_time`.
        changed: "t.created_at_ms >= ?",
        watermark_is_ms: true,
        found_by_time: true,
        sums: &["status"],
        page: Page::By(&["idempotency_key"]),
    },
    Table {
        name: "settlements",
        columns: &[
            "merchant_id",
            "day",
            "currency",
            "gross_captured",
            "refunded",
            "capture_count",
            "refund_count",
            "fee",
            "net",
            "updated_at",
            "version",
        ],
        write: Write::Upsert(&["merchant_id", "day", "currency"]),
        // A merchant has a row per day and currency: its key's prefix.
        changed: "t.updated_at >= ?",
        watermark_is_ms: false,
        found_by_time: false,
        sums: &["gross_captured", "refunded", "capture_count", "refund_count", "fee", "net", "version"],
        page: Page::Whole,
    },
    Table {
        name: "processed_events",
        columns: &["consumer", "event_id", "processed_at", "merchant_id"],
        write: Write::Upsert(&["consumer", "event_id"]),
        // `processed_events_by_time`.
        changed: "t.processed_at >= ?",
        watermark_is_ms: false,
        found_by_time: true,
        sums: &[],
        page: Page::By(&["consumer", "event_id"]),
    },
    Table {
        name: "failed_events",
        columns: &[
            "consumer",
            "source_topic",
            "source_partition",
            "source_offset",
            "event_id",
            "merchant_id",
            "record_key",
            "record_value",
            "headers",
            "error",
            "dead_letter_topic",
            "dead_letter_error",
            "failed_at",
        ],
        write: Write::Upsert(&["consumer", "source_topic", "source_partition", "source_offset"]),
        // Few rows: read whole.
        changed: "t.failed_at >= ?",
        watermark_is_ms: false,
        found_by_time: false,
        sums: &["source_offset"],
        page: Page::Whole,
    },
];

impl Table {
    /// The merchant's rows, the table named `alias` (or unqualified when
    /// empty): parameters from [`merchant_params`](Self::merchant_params).
    /// Processed event ids written before they carried a merchant are found
    /// through the merchant's outbox.
    fn merchant_rows(&self, alias: &str) -> String {
        self.merchant_filter(alias, "")
    }

    /// [`merchant_rows`](Self::merchant_rows) as a check only: `+` makes
    /// the column an expression, which no index serves, so the planner
    /// finds the rows by the other conditions.
    fn merchant_checked(&self, alias: &str) -> String {
        self.merchant_filter(alias, "+")
    }

    fn merchant_filter(&self, alias: &str, unary: &str) -> String {
        let t = if alias.is_empty() { String::new() } else { format!("{alias}.") };
        match self.name {
            "processed_events" => format!(
                "({unary}{t}merchant_id = ? OR ({t}merchant_id IS NULL AND {t}event_id IN \
                 (SELECT event_id FROM outbox WHERE merchant_id = ?)))"
            ),
            _ => format!("{unary}{t}merchant_id = ?"),
        }
    }

    /// `SELECT` of the merchant's rows as they are copied (the table is
    /// `t`; the outbox's `superseded_by` as the event id it points to),
    /// ready for more `AND` conditions; parameters from
    /// [`merchant_params`](Self::merchant_params).
    fn select_rows(&self) -> String {
        self.select_rows_where(&self.merchant_rows("t"))
    }

    /// [`select_rows`](Self::select_rows) with `filter` for the merchant's
    /// rows.
    fn select_rows_where(&self, filter: &str) -> String {
        self.select_rows_with(filter, &[])
    }

    /// [`select_rows_where`](Self::select_rows_where), with the columns
    /// `also` after each row's (a page's key).
    fn select_rows_with(&self, filter: &str, also: &[&str]) -> String {
        let columns = self.columns.iter().map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ");
        let (extra, join) = match self.name {
            "outbox" => (", s.event_id", " LEFT JOIN outbox s ON s.id = t.superseded_by"),
            _ => ("", ""),
        };
        let also: String = also.iter().map(|c| format!(", t.{c}")).collect();
        format!("SELECT {columns}{extra}{also} FROM {} t{join} WHERE {filter}", self.name)
    }

    /// The statement reading the merchant's rows changed since
    /// `watermark_ms` (0: every row, through the merchant's index), and its
    /// parameters.
    pub(super) fn changed_rows(&self, merchant: i64, watermark_ms: i64) -> (String, Vec<Value>) {
        let order = match self.name {
            "outbox" | "ledger_entries" => " ORDER BY t.id",
            _ => "",
        };
        let (filter, params) = self.changed_filter(merchant, watermark_ms);
        (format!("{}{order}", self.select_rows_where(&filter)), params)
    }

    /// The condition on `t` for the merchant's rows changed since
    /// `watermark_ms`, and its parameters.
    fn changed_filter(&self, merchant: i64, watermark_ms: i64) -> (String, Vec<Value>) {
        let mut params = self.merchant_params(merchant);
        if watermark_ms == 0 {
            return (self.merchant_rows("t"), params);
        }
        let merchant_filter =
            if self.found_by_time { self.merchant_checked("t") } else { self.merchant_rows("t") };
        let watermark = self.watermark(watermark_ms);
        params.extend(std::iter::repeat_n(watermark, self.changed.matches('?').count()));
        let changed = self.changed.replace("{m}", &merchant.to_string());
        (format!("{merchant_filter} AND {changed}"), params)
    }

    /// A page of [`changed_rows`](Self::changed_rows): at most `limit` rows
    /// in `key` order, past `after` (a key as the last page ended), each
    /// row followed by its key's columns.
    pub(super) fn changed_page(
        &self,
        merchant: i64,
        watermark_ms: i64,
        key: &[&str],
        after: Option<&[Value]>,
        limit: usize,
    ) -> (String, Vec<Value>) {
        assert!(!key.is_empty(), "{}: a page key has columns", self.name);
        let (mut filter, mut params) = self.changed_filter(merchant, watermark_ms);
        if let Some(after) = after {
            assert_eq!(after.len(), key.len(), "{}: a page ends on a whole key", self.name);
            filter = format!("{filter} AND {}", past(key));
            params.extend(past_params(after));
        }
        let order = key.iter().map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ");
        (format!("{} ORDER BY {order} LIMIT {limit}", self.select_rows_with(&filter, key)), params)
    }

    /// The rows of `payments` payments (their ids the last parameters but
    /// the watermark's) changed since `watermark_ms`: a table paged
    /// [`Page::WithPayments`]. Its rows carry the time of the write of
    /// their payment that made them, so those since the watermark belong
    /// to payments changed since it.
    pub(super) fn of_payments(
        &self,
        merchant: i64,
        watermark_ms: i64,
        payments: &[Value],
    ) -> (String, Vec<Value>) {
        assert!(self.page == Page::WithPayments, "{} is not read with its payments", self.name);
        let mut params = self.merchant_params(merchant);
        params.extend(payments.iter().cloned());
        let mut filter = format!(
            "{} AND t.payment_id IN ({})",
            self.merchant_checked("t"),
            vec!["?"; payments.len()].join(", ")
        );
        if watermark_ms > 0 {
            filter.push_str(" AND t.created_at >= ?");
            params.push(self.watermark(watermark_ms));
        }
        let order = if self.write == Write::ReplacePostings { " ORDER BY t.id" } else { "" };
        (format!("{}{order}", self.select_rows_where(&filter)), params)
    }

    /// The columns a copied row is found by on the target.
    fn key(&self) -> &'static [&'static str] {
        match self.write {
            Write::Upsert(key) => key,
            Write::ReplacePostings => &["posting_id"],
        }
    }

    /// The rows with one of `keys` keys (parameters: each key's columns in
    /// turn). Row values in an IN list are not portable (SQLite wants a
    /// subquery): a composite key is an OR of its matches.
    fn key_in(&self, keys: usize) -> String {
        match self.key() {
            [one] => format!("t.{one} IN ({})", vec!["?"; keys].join(", ")),
            columns => {
                let one = columns.iter().map(|c| format!("t.{c} = ?")).collect::<Vec<_>>().join(" AND ");
                format!("(({}))", vec![one; keys].join(") OR ("))
            }
        }
    }

    fn merchant_params(&self, merchant: i64) -> Vec<Value> {
        match self.name {
            "processed_events" => vec![Value::Int64(merchant), Value::Int64(merchant)],
            _ => vec![Value::Int64(merchant)],
        }
    }

    /// The watermark as the table's time column stores it.
    fn watermark(&self, watermark_ms: i64) -> Value {
        if self.watermark_is_ms {
            return Value::Int64(watermark_ms);
        }
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(watermark_ms.max(0) as u64);
        Value::Text(humantime::format_rfc3339_millis(at).to_string())
    }
}

/// Rows whose `key` is past a page's last key (parameters:
/// [`past_params`]). The first column's `>=` lets every planner bound the
/// index range; the rest is the row-value comparison spelt out, which
/// every dialect reads alike.
fn past(key: &[&str]) -> String {
    let ors: Vec<String> = (0..key.len())
        .map(|i| {
            let equal = key[..i].iter().map(|c| format!("t.{c} = ?"));
            equal.chain(std::iter::once(format!("t.{} > ?", key[i]))).collect::<Vec<_>>().join(" AND ")
        })
        .collect();
    format!("t.{} >= ? AND (({}))", key[0], ors.join(") OR ("))
}

/// The parameters of [`past`] for the key `last`.
fn past_params(last: &[Value]) -> Vec<Value> {
    let mut params = vec![last[0].clone()];
    for i in 0..last.len() {
        params.extend(last[..=i].iter().cloned());
    }
    params
}

/// How many rows a round copied.
#[derive(Debug, Default, Clone)]
pub struct Copied {
    pub rows: u64,
    /// Pages read (a round in pages, [`super::pages`]).
    pub pages: u64,
    /// Outbox rows' event ids and the event id their `superseded_by`
    /// points to, as written (a round in pages points them again at its
    /// end: the newer row may come in a later page).
    pub superseded: Vec<(Value, Value)>,
}

/// Copies `merchant`'s rows changed since `watermark_ms` (0: all) from
/// `source` to `target`. `fresh`: the target has none of its rows (the
/// ledger's postings need no replacing).
pub async fn copy_changed(
    source: &Shard,
    target: &Shard,
    merchant: i64,
    watermark_ms: i64,
    fresh: bool,
) -> anyhow::Result<Copied> {
    let mut tx = source.begin(false).await.map_err(sql_error("opening a read on the source"))?;
    let read = read_changed(&mut tx, merchant, watermark_ms).await;
    tx.rollback().await;
    write_rows(target, merchant, read?, fresh).await
}

/// The source's rows changed since `watermark_ms`, table by table, read in
/// `tx` (one snapshot on the servers; SQLite reads are of one transaction
/// too). The outbox's `superseded_by` is read as the event id it points to.
pub async fn read_changed(
    tx: &mut ShardTx,
    merchant: i64,
    watermark_ms: i64,
) -> anyhow::Result<Vec<(&'static Table, RowSet)>> {
    let mut out = Vec::with_capacity(TABLES.len());
    // Dependents first: a PostgreSQL read transaction is READ COMMITTED,
    // so each statement sees what committed before it; read after its
    // refunds and ledger entries, the payments hold every one they name.
    for table in TABLES.iter().rev() {
        let (statement, params) = table.changed_rows(merchant, watermark_ms);
        let rows =
            tx.scan(&statement, params).await.map_err(sql_error(&format!("reading {}", table.name)))?;
        out.push((table, rows));
    }
    // Written in foreign-key order.
    out.reverse();
    Ok(out)
}

/// Writes rows read by [`read_changed`] to `target`, in transactions of
/// about [`ROWS_PER_TRANSACTION`] rows: a few tables' worth share one (the
/// freeze's last changes commit at once, not a group commit per table).
pub async fn write_rows(
    target: &Shard,
    merchant: i64,
    read: Vec<(&'static Table, RowSet)>,
    fresh: bool,
) -> anyhow::Result<Copied> {
    let mut writer = Writer { target, tx: None, rows: 0 };
    let written = writer.write(merchant, read, fresh).await;
    match (written, writer.tx.take()) {
        (Ok(copied), Some(tx)) => {
            tx.commit().await.map_err(sql_error("committing the copy"))?;
            Ok(copied)
        }
        (Ok(copied), None) => Ok(copied),
        (Err(e), tx) => {
            if let Some(tx) = tx {
                tx.rollback().await;
            }
            Err(e)
        }
    }
}

/// The target's open write transaction and how many rows it holds.
struct Writer<'a> {
    target: &'a Shard,
    tx: Option<ShardTx>,
    rows: usize,
}

impl Writer<'_> {
    async fn write(
        &mut self,
        merchant: i64,
        read: Vec<(&'static Table, RowSet)>,
        fresh: bool,
    ) -> anyhow::Result<Copied> {
        let dialect = self.target.dialect();
        let mut copied = Copied::default();
        for (table, rows) in read {
            copied.rows += rows.rows.len() as u64;
            if rows.rows.is_empty() {
                continue;
            }
            let width = table.columns.len();
            // The outbox's extra column: the event id `superseded_by` points to.
            let mut superseded: Vec<(Value, Value)> = Vec::new();
            let mut data: Vec<Vec<Value>> = Vec::with_capacity(rows.rows.len());
            for mut row in rows.rows {
                if row.len() > width {
                    let points_to = row.pop().unwrap_or(Value::Null);
                    if !matches!(points_to, Value::Null) {
                        superseded.push((row[0].clone(), points_to));
                    }
                }
                normalise(table, merchant, &mut row);
                data.push(row);
            }
            for batch in batches(table, &data) {
                let tx = self.room_for(batch.len()).await?;
                write_batch(tx, dialect, table, &batch, fresh).await?;
            }
            if !superseded.is_empty() {
                // In the transaction that wrote the rows pointed to, or after.
                let tx = self.room_for(superseded.len()).await?;
                point_superseded(tx, &superseded).await?;
                copied.superseded.extend(superseded);
            }
        }
        Ok(copied)
    }

    /// The open transaction if `rows` more fit in it, else a new one (the
    /// open one committed).
    async fn room_for(&mut self, rows: usize) -> anyhow::Result<&mut ShardTx> {
        if self.rows > 0 && self.rows + rows > ROWS_PER_TRANSACTION {
            if let Some(tx) = self.tx.take() {
                tx.commit().await.map_err(sql_error("committing the copy"))?;
            }
            self.rows = 0;
        }
        if self.tx.is_none() {
            self.tx =
                Some(self.target.begin(true).await.map_err(sql_error("opening a write on the target"))?);
        }
        self.rows += rows;
        Ok(self.tx.as_mut().expect("opened above"))
    }
}

/// A row as the target stores it: processed event ids written before they
/// carried a merchant get it.
fn normalise(table: &Table, merchant: i64, row: &mut [Value]) {
    if table.name == "processed_events" {
        row[3] = Value::Int64(merchant);
    }
}

/// Reads back from `target` the rows of `read` (as [`read_changed`] gave
/// them and [`write_rows`] wrote them), by key, and compares them with what
/// was read: the tables whose rows differ (empty: written as read).
pub async fn verify_written(
    target: &Shard,
    merchant: i64,
    read: &[(&'static Table, RowSet)],
) -> anyhow::Result<Vec<String>> {
    let mut differences = Vec::new();
    let mut tx = target.begin(false).await.map_err(sql_error("opening a read on the target"))?;
    for (table, rows) in read.iter().filter(|(_, rows)| !rows.rows.is_empty()) {
        let at: Vec<usize> =
            table.key().iter().filter_map(|k| table.columns.iter().position(|c| c == k)).collect();
        assert_eq!(at.len(), table.key().len(), "{}: key columns are copied columns", table.name);
        let mut seen = HashSet::new();
        let keys: Vec<Vec<Value>> = rows
            .rows
            .iter()
            .map(|row| at.iter().map(|&i| row[i].clone()).collect::<Vec<_>>())
            .filter(|key| seen.insert(format!("{key:?}")))
            .collect();
        let mut expected: Vec<String> = rows
            .rows
            .iter()
            .map(|row| {
                let mut row = row.clone();
                normalise(table, merchant, &mut row);
                format!("{row:?}")
            })
            .collect();
        let mut found = Vec::with_capacity(expected.len());
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let statement = format!("{} AND {}", table.select_rows(), table.key_in(chunk.len()));
            let mut params = table.merchant_params(merchant);
            params.extend(chunk.iter().flat_map(|k| k.iter().cloned()));
            let back = match tx.query(&statement, params).await {
                Ok(back) => back,
                Err(e) => {
                    tx.rollback().await;
                    return Err(sql_error(&format!("reading back {}", table.name))(e));
                }
            };
            found.extend(back.rows.iter().map(|row| format!("{row:?}")));
        }
        expected.sort_unstable();
        found.sort_unstable();
        if expected != found {
            let first = expected.iter().zip(&found).find(|(e, f)| e != f);
            differences.push(format!(
                "{}: {} rows copied, {} found{}",
                table.name,
                expected.len(),
                found.len(),
                first.map(|(e, f)| format!(" (copied {e}, found {f})")).unwrap_or_default()
            ));
        }
    }
    tx.rollback().await;
    Ok(differences)
}

/// `data` in transactions of about [`ROWS_PER_TRANSACTION`] rows. A
/// posting's ledger entries stay in one (its replacement deletes the
/// posting's entries first: split, the second half would delete the first).
fn batches<'a>(table: &Table, data: &'a [Vec<Value>]) -> Vec<std::borrow::Cow<'a, [Vec<Value>]>> {
    if table.write != Write::ReplacePostings {
        return data.chunks(ROWS_PER_TRANSACTION).map(std::borrow::Cow::Borrowed).collect();
    }
    let mut postings: Vec<Vec<Vec<Value>>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for row in data {
        let posting = text(&row[0]).unwrap_or_default();
        let at = *index.entry(posting).or_insert_with(|| {
            postings.push(Vec::new());
            postings.len() - 1
        });
        postings[at].push(row.clone());
    }
    let mut out = Vec::new();
    let mut batch: Vec<Vec<Value>> = Vec::new();
    for posting in postings {
        if !batch.is_empty() && batch.len() + posting.len() > ROWS_PER_TRANSACTION {
            out.push(std::borrow::Cow::Owned(std::mem::take(&mut batch)));
        }
        batch.extend(posting);
    }
    if !batch.is_empty() {
        out.push(std::borrow::Cow::Owned(batch));
    }
    out
}

async fn write_batch(
    tx: &mut ShardTx,
    dialect: Dialect,
    table: &Table,
    batch: &[Vec<Value>],
    fresh: bool,
) -> anyhow::Result<()> {
    if table.write == Write::ReplacePostings && !fresh {
        let postings: BTreeSet<String> = batch.iter().filter_map(|row| text(&row[0])).collect();
        let postings: Vec<Value> = postings.into_iter().map(Value::Text).collect();
        for chunk in postings.chunks(ROWS_PER_STATEMENT) {
            let statement = format!(
                "DELETE FROM ledger_entries WHERE posting_id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            tx.execute(&statement, chunk.to_vec()).await.map_err(sql_error("replacing ledger postings"))?;
        }
    }
    for chunk in batch.chunks(ROWS_PER_STATEMENT) {
        let statement = insert_statement(dialect, table, chunk.len());
        let params: Vec<Value> = chunk.iter().flatten().cloned().collect();
        tx.execute(&statement, params).await.map_err(sql_error(&format!("writing {}", table.name)))?;
    }
    Ok(())
}

/// A multi-row insert of `rows` rows that overwrites a row with the same key.
fn insert_statement(dialect: Dialect, table: &Table, rows: usize) -> String {
    let columns = table.columns.join(", ");
    let one = format!("({})", vec!["?"; table.columns.len()].join(", "));
    let values = vec![one; rows].join(", ");
    let insert = format!("INSERT INTO {} ({columns}) VALUES {values}", table.name);
    let Write::Upsert(key) = table.write else {
        return insert;
    };
    let rest: Vec<&&str> = table.columns.iter().filter(|c| !key.contains(c)).collect();
    match dialect {
        Dialect::Mysql => {
            let set: Vec<String> = rest.iter().map(|c| format!("{c} = VALUES({c})")).collect();
            format!("{insert} ON DUPLICATE KEY UPDATE {}", set.join(", "))
        }
        Dialect::Sqlite | Dialect::Postgres => {
            let set: Vec<String> = rest.iter().map(|c| format!("{c} = excluded.{c}")).collect();
            format!("{insert} ON CONFLICT ({}) DO UPDATE SET {}", key.join(", "), set.join(", "))
        }
    }
}

/// Sets the copied outbox rows' `superseded_by` to the target's id of the
/// row they point to (ids are each shard's own).
async fn point_superseded(tx: &mut ShardTx, superseded: &[(Value, Value)]) -> anyhow::Result<()> {
    for chunk in superseded.chunks(ROWS_PER_STATEMENT) {
        let newer: BTreeSet<String> = chunk.iter().filter_map(|(_, to)| text(to)).collect();
        let newer: Vec<Value> = newer.into_iter().map(Value::Text).collect();
        let ids = tx
            .query(
                &format!(
                    "SELECT event_id, id FROM outbox WHERE event_id IN ({})",
                    vec!["?"; newer.len()].join(", ")
                ),
                newer,
            )
            .await
            .map_err(sql_error("reading the target's outbox ids"))?;
        let ids: HashMap<String, Value> =
            ids.rows.into_iter().filter_map(|row| Some((text(&row[0])?, row[1].clone()))).collect();
        let mut cases = Vec::new();
        let mut params = Vec::new();
        let mut which = Vec::new();
        for (event, to) in chunk {
            // The newer row may not be copied yet (a later round has it).
            let Some(id) = text(to).and_then(|to| ids.get(&to)) else { continue };
            cases.push("WHEN ? THEN ?");
            params.push(event.clone());
            params.push(id.clone());
            which.push(event.clone());
        }
        if !which.is_empty() {
            let statement = format!(
                "UPDATE outbox SET superseded_by = CASE event_id {} END WHERE event_id IN ({})",
                cases.join(" "),
                vec!["?"; which.len()].join(", ")
            );
            params.extend(which);
            tx.execute(&statement, params).await.map_err(sql_error("pointing superseded outbox rows"))?;
        }
    }
    Ok(())
}

/// [`point_superseded`] in a transaction of its own: after a round's
/// pages, for the rows whose newer row came in a later page.
pub(super) async fn point_superseded_on(target: &Shard, superseded: &[(Value, Value)]) -> anyhow::Result<()> {
    if superseded.is_empty() {
        return Ok(());
    }
    let mut tx = target.begin(true).await.map_err(sql_error("opening a write on the target"))?;
    if let Err(e) = point_superseded(&mut tx, superseded).await {
        tx.rollback().await;
        return Err(e);
    }
    tx.commit().await.map_err(sql_error("committing the outbox's pointers"))
}

/// What [`figures`] reads of each table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// The row count and the sums (scans the merchant's rows).
    Sums,
    /// The row count only (an index's count, where one covers the filter).
    Count,
}

/// Per table, the merchant's figures: what [`differences`] compares.
pub type Figures = Vec<(&'static str, String)>;

/// One side's figures for `merchant`: each table in a read of its own,
/// [`figures_at_once`] tables at a time (the counts are most of a freeze's
/// pause, and a server counts several tables at once on several cores).
/// No snapshot spans the tables, so the callers compare sides that only
/// the mover changes: a target, or the source of a frozen merchant (whose
/// rows nothing deletes: retention, expiry and the failed-event re-drive
/// skip a fenced merchant). The verified round's figures, read while the
/// merchant is served, come from one snapshot instead ([`copy_verified`]).
pub async fn figures(shard: &Arc<Shard>, merchant: i64, measure: Measure) -> anyhow::Result<Figures> {
    let at_once = Arc::new(tokio::sync::Semaphore::new(figures_at_once(shard)));
    let tables: Vec<_> = TABLES
        .iter()
        .map(|table| {
            let (shard, at_once) = (shard.clone(), at_once.clone());
            // A task each: an embedded shard's statements run on the
            // caller's thread, so tasks are what lets two run at once.
            tokio::spawn(async move {
                let _turn = at_once.acquire_owned().await.context("the figures' semaphore closed")?;
                let mut tx = shard.begin(false).await.map_err(sql_error("opening a read"))?;
                let figure = table_figures(&mut tx, shard.dialect(), table, merchant, measure).await;
                tx.rollback().await;
                figure
            })
        })
        .collect();
    let mut out = Vec::with_capacity(TABLES.len());
    for table in tables {
        out.push(table.await.context("a table's figures")??);
    }
    Ok(out)
}

/// How many tables [`figures`] reads at once on `shard`: half its
/// connections, at most four (what is left serves requests).
fn figures_at_once(shard: &Shard) -> usize {
    (shard.pool_use().max / 2).clamp(1, 4) as usize
}

/// The figures as `tx` sees them, in one snapshot where `tx` holds one.
async fn figures_in(
    tx: &mut ShardTx,
    dialect: Dialect,
    merchant: i64,
    measure: Measure,
) -> anyhow::Result<Figures> {
    let mut out = Vec::with_capacity(TABLES.len());
    for table in &TABLES {
        out.push(table_figures(tx, dialect, table, merchant, measure).await?);
    }
    Ok(out)
}

/// One table's figures for `merchant`, as `tx` sees them.
async fn table_figures(
    tx: &mut ShardTx,
    dialect: Dialect,
    table: &'static Table,
    merchant: i64,
    measure: Measure,
) -> anyhow::Result<(&'static str, String)> {
    // As integers: a sum of BIGINT is DECIMAL on MariaDB and NUMERIC on
    // PostgreSQL.
    let integer = if dialect == Dialect::Mysql { "SIGNED" } else { "BIGINT" };
    let mut select = vec!["COUNT(*)".to_string()];
    if measure == Measure::Sums {
        select.extend(table.sums.iter().map(|s| format!("CAST(COALESCE(SUM({s}), 0) AS {integer})")));
    }
    let statement =
        format!("SELECT {} FROM {} WHERE {}", select.join(", "), table.name, table.merchant_rows(""));
    let rows = tx
        .scan(&statement, table.merchant_params(merchant))
        .await
        .map_err(sql_error(&format!("summing {}", table.name)))?;
    Ok((table.name, format!("{:?}", rows.rows)))
}

/// What [`copy_verified`] did.
pub struct Verified {
    pub copied: Copied,
    /// The tables whose figures differ (empty: the copy is verified).
    pub differences: Vec<String>,
    /// The rows the round read and wrote, as [`Written`] knows them.
    pub written: Written,
}

/// Rows known to be on the target as they are on the source: the last
/// freeze need not write them again (the target holds the verified
/// snapshot's rows; one of these read again unchanged is still there).
#[derive(Debug, Default)]
pub struct Written(HashSet<String>);

impl Written {
    /// The rows of `read`; none past [`MAX_REMEMBERED`] (then the freeze
    /// writes every row it reads, as after a restart).
    fn of(read: &[(&'static Table, RowSet)]) -> Self {
        if read.iter().map(|(_, rows)| rows.rows.len()).sum::<usize>() > MAX_REMEMBERED {
            return Self::default();
        }
        Self(
            read.iter()
                .flat_map(|(table, rows)| rows.rows.iter().map(|row| fingerprint(table, row)))
                .collect(),
        )
    }

    /// `read` without the rows already written as they are: a row of an
    /// upserted table when unchanged, a ledger posting when every entry of
    /// it is (a posting is written whole).
    pub fn unwritten(&self, read: Vec<(&'static Table, RowSet)>) -> Vec<(&'static Table, RowSet)> {
        read.into_iter()
            .map(|(table, mut rows)| {
                if table.write == Write::ReplacePostings {
                    let changed: HashSet<String> = rows
                        .rows
                        .iter()
                        .filter(|row| !self.0.contains(&fingerprint(table, row)))
                        .filter_map(|row| text(&row[0]))
                        .collect();
                    rows.rows.retain(|row| text(&row[0]).is_some_and(|posting| changed.contains(&posting)));
                } else {
                    rows.rows.retain(|row| !self.0.contains(&fingerprint(table, row)));
                }
                (table, rows)
            })
            .collect()
    }
}

/// A row as read, whole (exact: no hash that two rows could share).
fn fingerprint(table: &Table, row: &[Value]) -> String {
    format!("{}{row:?}", table.name)
}

/// A round that also verifies the whole copy: the changed rows and the
/// source's figures are read in one snapshot, so once those rows are
/// written the target holds exactly that snapshot's rows (earlier rounds
/// copied every row older than the watermark) and its figures must be the
/// snapshot's.
pub async fn copy_verified(
    source: &Shard,
    target: &Arc<Shard>,
    merchant: i64,
    watermark_ms: i64,
    fresh: bool,
) -> anyhow::Result<Verified> {
    let mut tx = source.begin_snapshot().await.map_err(sql_error("opening a snapshot of the source"))?;
    let read = async {
        let read = read_changed(&mut tx, merchant, watermark_ms).await?;
        let figures = figures_in(&mut tx, source.dialect(), merchant, Measure::Sums).await?;
        anyhow::Ok((read, figures))
    }
    .await;
    tx.rollback().await;
    let (read, source_figures) = read?;
    let written = Written::of(&read);
    let copied = write_rows(target, merchant, read, fresh).await?;
    let target_figures = figures(target, merchant, Measure::Sums).await?;
    Ok(Verified { copied, differences: differences(&source_figures, &target_figures), written })
}

/// The tables whose figures differ between the sides (empty: the copy is
/// verified).
pub fn differences(source: &[(&'static str, String)], target: &[(&'static str, String)]) -> Vec<String> {
    source
        .iter()
        .zip(target)
        .filter(|(s, t)| s.1 != t.1)
        .map(|(s, t)| format!("{}: source {} target {}", s.0, s.1, t.1))
        .collect()
}

/// Deletes every row of `merchant` on `shard`, a chunk per transaction
/// (referencing tables first). Returns how many. With `pace`, the chunks
/// are of its page size and paced ([`MovesConfig`]): the shard serves
/// other merchants meanwhile. Without, they follow each other at once (a
/// frozen merchant's copy, redone, waits on this).
pub async fn delete_merchant(
    shard: &Shard,
    merchant: i64,
    pace: Option<&MovesConfig>,
) -> anyhow::Result<u64> {
    let mut deleted = 0;
    let chunk = pace.map_or(DELETE_CHUNK, |pace| pace.page_rows);
    // Processed ids are found through the outbox: before it.
    for table in TABLES.iter().rev() {
        loop {
            if let Some(pace) = pace {
                pace.wait_for_room(&[shard]).await;
            }
            let started = std::time::Instant::now();
            let filter = table.merchant_rows("");
            let statement = match shard.dialect() {
                Dialect::Sqlite => format!(
                    "DELETE FROM {0} WHERE rowid IN (SELECT rowid FROM {0} WHERE {filter} LIMIT {chunk})",
                    table.name
                ),
                Dialect::Mysql => format!("DELETE FROM {} WHERE {filter} LIMIT {chunk}", table.name),
                Dialect::Postgres => format!(
                    "DELETE FROM {0} WHERE ctid = ANY (ARRAY (SELECT ctid FROM {0} WHERE {filter} LIMIT {chunk}))",
                    table.name
                ),
            };
            let mut tx = shard.begin(true).await.map_err(sql_error("opening a delete"))?;
            let n = match tx.execute(&statement, table.merchant_params(merchant)).await {
                Ok(n) => n,
                Err(e) => {
                    tx.rollback().await;
                    return Err(sql_error(&format!("deleting {}", table.name))(e));
                }
            };
            tx.commit().await.map_err(sql_error(&format!("committing the delete of {}", table.name)))?;
            deleted += n;
            if let Some(pace) = pace {
                pace.rest_after(started.elapsed()).await;
            }
            if n < chunk as u64 {
                break;
            }
        }
    }
    Ok(deleted)
}

/// Records (or updates) `merchant`'s fence on `shard` (`moving_merchants`).
pub async fn fence(
    tx: &mut ShardTx,
    dialect: Dialect,
    merchant: i64,
    move_id: i64,
    role: &str,
    hold_events: bool,
) -> anyhow::Result<()> {
    let statement = match dialect {
        Dialect::Mysql => {
            "INSERT INTO moving_merchants (merchant_id, move_id, role, hold_events) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE move_id = VALUES(move_id), role = VALUES(role), hold_events = VALUES(hold_events)"
        }
        Dialect::Sqlite | Dialect::Postgres => {
            "INSERT INTO moving_merchants (merchant_id, move_id, role, hold_events) VALUES (?, ?, ?, ?) \
             ON CONFLICT (merchant_id) DO UPDATE SET move_id = excluded.move_id, role = excluded.role, \
             hold_events = excluded.hold_events"
        }
    };
    let params = vec![
        Value::Int64(merchant),
        Value::Int64(move_id),
        Value::Text(role.to_string()),
        Value::Int64(i64::from(hold_events)),
    ];
    tx.execute(statement, params).await.map_err(sql_error("writing the move's fence"))?;
    Ok(())
}

/// Writes `merchant`'s fence on `shard` in a transaction of its own.
pub async fn set_fence(
    shard: &Shard,
    merchant: i64,
    move_id: i64,
    role: &str,
    hold_events: bool,
) -> anyhow::Result<()> {
    let mut tx = shard.begin(true).await.map_err(sql_error("opening a write"))?;
    if let Err(e) = fence(&mut tx, shard.dialect(), merchant, move_id, role, hold_events).await {
        tx.rollback().await;
        return Err(e);
    }
    tx.commit().await.map_err(sql_error("committing the move's fence"))
}

/// Removes `merchant`'s fence on `shard`.
pub async fn remove_fence(shard: &Shard, merchant: i64) -> anyhow::Result<()> {
    let mut tx = shard.begin(true).await.map_err(sql_error("opening a write"))?;
    if let Err(e) =
        tx.execute("DELETE FROM moving_merchants WHERE merchant_id = ?", vec![Value::Int64(merchant)]).await
    {
        tx.rollback().await;
        return Err(sql_error("removing the move's fence")(e));
    }
    tx.commit().await.map_err(sql_error("committing the fence's removal"))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::Text(t) => Some(t.clone()),
        Value::Blob(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

pub fn sql_error(doing: &str) -> impl Fn(crate::bindings::sql::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{doing}: {e:?}")
}

/// Whether a shard answers for a merchant's rows at all (a target must be
/// migrated: `moving_merchants` exists).
pub async fn check_ready(shard: &Shard) -> anyhow::Result<()> {
    if let Some(why) = shard.not_ready() {
        bail!("shard `{}` is not ready: {why}", shard.name);
    }
    let unreachable = format!("shard `{}` is unreachable", shard.name);
    let mut tx = shard.begin(false).await.map_err(sql_error(&unreachable))?;
    let probe = tx.query("SELECT COUNT(*) FROM moving_merchants", Vec::new()).await;
    tx.rollback().await;
    match probe {
        Ok(_) => Ok(()),
        Err(e @ SqlError::Unavailable(_)) => Err(sql_error(&unreachable)(e)),
        Err(e) => Err(sql_error(&format!("shard `{}` lacks the moves table (migrate it)", shard.name))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_rows_are_found_again_by_their_key() {
        let payments = &TABLES[0];
        assert_eq!(payments.key_in(2), "t.id IN (?, ?)");
        let settlements = TABLES.iter().find(|t| t.name == "settlements").expect("settlements");
        assert_eq!(
            settlements.key_in(2),
            "((t.merchant_id = ? AND t.day = ? AND t.currency = ?) OR \
             (t.merchant_id = ? AND t.day = ? AND t.currency = ?))"
        );
        let ledger = &TABLES[2];
        assert_eq!(ledger.key_in(1), "t.posting_id IN (?)");
    }

    #[test]
    fn the_ledger_is_found_through_changed_payments() {
        // The ledger's read checks the merchant filter only.
        let ledger = &TABLES[2];
        assert!(ledger.changed.contains("{m}") && ledger.found_by_time);
        assert!(ledger.select_rows().contains("WHERE t.merchant_id"), "{}", ledger.select_rows());
        assert!(TABLES.iter().filter(|t| t.changed.contains("{m}")).all(|t| t.name == "ledger_entries"));
        let processed = TABLES.iter().find(|t| t.name == "processed_events").expect("processed_events");
        assert!(processed.merchant_checked("t").starts_with("(+t.merchant_id = ? OR (t.merchant_id IS NULL"));
    }

    /// The last rounds and the freeze read what the last seconds changed:
    /// every read of a recent watermark searches an index that leads with
    /// time (or, for payments, refunds and settlements, the merchant's
    /// rows by time), never the merchant's whole history.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recent_changes_are_found_by_time() {
        let (_dir, shard) = crate::shards::test_shard().await;
        let mut read = shard.begin(false).await.unwrap();
        let expected = [
            ("payments", &["SEARCH t USING INDEX payments_by_merchant (merchant_id=?)"][..]),
            ("refunds", &["SEARCH t USING INDEX refunds_by_merchant (merchant_id=? AND created_at>?)"]),
            (
                "ledger_entries",
                &[
                    "SEARCH t USING INDEX ledger_by_payment (payment_id=?)",
                    "SEARCH p USING INDEX payments_by_merchant (merchant_id=?)",
                ],
            ),
            (
                "outbox",
                &[
                    // The pending rows: either index leads with `published`.
                    "SEARCH t USING INDEX * (published=?)",
                    "SEARCH t USING INDEX outbox_published_at (published=? AND dead_lettered=? AND published_at>?)",
                ],
            ),
            ("idempotency_keys", &["SEARCH t USING INDEX idempotency_keys_by_time (created_at_ms>?)"]),
            ("settlements", &["SEARCH t USING INDEX sqlite_autoindex_settlements_1 (merchant_id=?)"]),
            ("processed_events", &["SEARCH t USING INDEX processed_events_by_time (processed_at>?)"]),
            // Few rows (failures of the settlement consumer): read whole.
            ("failed_events", &["SCAN t"]),
        ];
        for (table, searches) in expected {
            let table = TABLES.iter().find(|t| t.name == table).expect("a table of the move");
            let (statement, params) = table.changed_rows(7, 1_796_000_000_000);
            let plan = read.query(&format!("EXPLAIN QUERY PLAN {statement}"), params).await.unwrap();
            let plan: Vec<String> = plan.rows.iter().filter_map(|row| text(&row[3])).collect();
            for search in searches {
                let found = match search.split_once(" * ") {
                    Some((head, tail)) => {
                        plan.iter().any(|step| step.starts_with(head) && step.ends_with(tail))
                    }
                    None => plan.iter().any(|step| step == search),
                };
                assert!(found, "{}: no `{search}` in {plan:?}", table.name);
            }
            if table.name != "failed_events" {
                assert!(!plan.iter().any(|step| step.starts_with("SCAN t")), "{}: {plan:?}", table.name);
            }
        }
        read.rollback().await;
    }

    fn rows(rows: &[&[&str]]) -> RowSet {
        RowSet {
            columns: Vec::new(),
            rows: rows.iter().map(|r| r.iter().map(|v| Value::Text(v.to_string())).collect()).collect(),
        }
    }

    #[test]
    fn the_freeze_writes_only_what_changed_since_the_verified_round() {
        let (payments, ledger) = (&TABLES[0], &TABLES[2]);
        let verified = Written::of(&[
            (payments, rows(&[&["pay_1", "authorized"], &["pay_2", "authorized"]])),
            (
                ledger,
                rows(&[&["pst_1", "hold"], &["pst_1", "pending"], &["pst_2", "hold"], &["pst_2", "pending"]]),
            ),
        ]);
        let again = verified.unwritten(vec![
            (payments, rows(&[&["pay_1", "authorized"], &["pay_2", "captured"], &["pay_3", "authorized"]])),
            // pst_2 gained an entry: written whole again; pst_1 did not.
            (
                ledger,
                rows(&[
                    &["pst_1", "hold"],
                    &["pst_1", "pending"],
                    &["pst_2", "hold"],
                    &["pst_2", "pending"],
                    &["pst_2", "fee"],
                ]),
            ),
        ]);
        let kept = |i: usize| -> Vec<String> { again[i].1.rows.iter().map(|r| format!("{r:?}")).collect() };
        let expected = rows(&[&["pay_2", "captured"], &["pay_3", "authorized"]]);
        assert_eq!(kept(0), expected.rows.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>());
        assert_eq!(kept(1).len(), 3, "{:?}", kept(1));
        assert!(kept(1).iter().all(|r| r.contains("pst_2")));
        // Past its bound, nothing is remembered: everything is written.
        let many = rows(&vec![&["pay_x", "authorized"][..]; MAX_REMEMBERED + 1]);
        let forgotten = Written::of(&[(payments, many.clone())]).unwritten(vec![(payments, many)]);
        assert_eq!(forgotten[0].1.rows.len(), MAX_REMEMBERED + 1);
    }

    #[test]
    fn a_posting_is_never_split_across_transactions() {
        let ledger = &TABLES[2];
        // Postings of 3 entries, interleaved as concurrent inserts leave them.
        let mut rows = Vec::new();
        for i in 0..3 * ROWS_PER_TRANSACTION {
            rows.push(vec![Value::Text(format!("pst_{}", i % 1_999))]);
        }
        let batches = batches(ledger, &rows);
        assert!(batches.len() > 1);
        let mut seen = HashSet::new();
        for batch in &batches {
            let here: HashSet<String> = batch.iter().filter_map(|r| text(&r[0])).collect();
            assert!(here.is_disjoint(&seen), "a posting in two transactions");
            seen.extend(here);
        }
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), rows.len());
    }

    #[test]
    fn upserts_leave_the_key_alone() {
        let payments = &TABLES[0];
        let sql = insert_statement(Dialect::Postgres, payments, 2);
        assert!(
            sql.ends_with("captured_at = excluded.captured_at, capture_event_id = excluded.capture_event_id")
        );
        assert!(sql.contains("ON CONFLICT (id) DO UPDATE SET merchant_id = excluded.merchant_id"));
        assert!(!sql.contains("SET id ="));
        let sql = insert_statement(Dialect::Mysql, payments, 1);
        assert!(sql.contains("ON DUPLICATE KEY UPDATE merchant_id = VALUES(merchant_id)"));
        assert!(!insert_statement(Dialect::Sqlite, &TABLES[2], 1).contains("ON CONFLICT"));
    }
}
