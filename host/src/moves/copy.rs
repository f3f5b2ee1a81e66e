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

use std::collections::{BTreeSet, HashMap};

use anyhow::bail;

use crate::bindings::sql::{Dialect, RowSet, Value};
use crate::capabilities::sql::{Shard, ShardTx};

/// Rows per INSERT (the widest table has 14 columns: well under every
/// dialect's limit on parameters).
const ROWS_PER_STATEMENT: usize = 200;
/// Rows per write transaction on the target (on SQLite the shard's writer
/// is held that long: short, so other merchants' requests go on).
const ROWS_PER_TRANSACTION: usize = 2_000;
/// Rows per DELETE when a side's rows are removed.
const DELETE_CHUNK: usize = 2_000;

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

/// One table a merchant has rows in.
pub struct Table {
    pub name: &'static str,
    /// Copied as they are (the surrogate `id` of the ledger, the outbox and
    /// failed events is the target's own).
    columns: &'static [&'static str],
    write: Write,
    /// Rows changed at or after the watermark (`?`: RFC 3339 text, or
    /// epoch milliseconds for `idempotency_keys`), besides the merchant.
    changed: &'static str,
    watermark_is_ms: bool,
    /// Compared between the sides after the copy.
    sums: &'static [&'static str],
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
        changed: "updated_at >= ?",
        watermark_is_ms: false,
        sums: &["amount", "captured_amount", "refunded_amount", "version"],
    },
    Table {
        name: "refunds",
        columns: &["id", "payment_id", "merchant_id", "amount", "reason", "created_at", "event_id"],
        write: Write::Upsert(&["id"]),
        changed: "created_at >= ?",
        watermark_is_ms: false,
        sums: &["amount"],
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
        changed: "created_at >= ?",
        watermark_is_ms: false,
        sums: &["amount", "CASE WHEN amount > 0 THEN amount ELSE 0 END"],
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
        // A row changes when written, published, refused or dead-lettered;
        // a pending one may change any time.
        changed: "(created_at >= ? OR published_at >= ? OR last_retry_at >= ? OR published = 0)",
        watermark_is_ms: false,
        sums: &["published", "dead_lettered", "retry_count"],
    },
    Table {
        name: "idempotency_keys",
        columns: &["merchant_id", "idempotency_key", "fingerprint", "status", "body", "created_at_ms"],
        write: Write::Upsert(&["merchant_id", "idempotency_key"]),
        changed: "created_at_ms >= ?",
        watermark_is_ms: true,
        sums: &["status"],
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
        changed: "updated_at >= ?",
        watermark_is_ms: false,
        sums: &["gross_captured", "refunded", "capture_count", "refund_count", "fee", "net", "version"],
    },
    Table {
        name: "processed_events",
        columns: &["consumer", "event_id", "processed_at", "merchant_id"],
        write: Write::Upsert(&["consumer", "event_id"]),
        changed: "processed_at >= ?",
        watermark_is_ms: false,
        sums: &[],
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
        changed: "failed_at >= ?",
        watermark_is_ms: false,
        sums: &["source_offset"],
    },
];

impl Table {
    /// The merchant's rows, the table named `alias` (or unqualified when
    /// empty): parameters from [`merchant_params`](Self::merchant_params).
    /// Processed event ids written before they carried a merchant are found
    /// through the merchant's outbox.
    fn merchant_rows(&self, alias: &str) -> String {
        let t = if alias.is_empty() { String::new() } else { format!("{alias}.") };
        match self.name {
            "processed_events" => format!(
                "({t}merchant_id = ? OR ({t}merchant_id IS NULL AND {t}event_id IN \
                 (SELECT event_id FROM outbox WHERE merchant_id = ?)))"
            ),
            _ => format!("{t}merchant_id = ?"),
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

/// How many rows a round copied.
#[derive(Debug, Default, Clone)]
pub struct Copied {
    pub rows: u64,
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
        let columns = table.columns.iter().map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ");
        let mut params = table.merchant_params(merchant);
        let watermark = table.watermark(watermark_ms);
        params.extend(std::iter::repeat_n(watermark, table.changed.matches('?').count()));
        let (extra, join, order) = match table.name {
            "outbox" => (", s.event_id", " LEFT JOIN outbox s ON s.id = t.superseded_by", " ORDER BY t.id"),
            "ledger_entries" => ("", "", " ORDER BY t.id"),
            _ => ("", "", ""),
        };
        let filter = table.merchant_rows("t");
        let changed = qualify(table.changed);
        let statement = format!(
            "SELECT {columns}{extra} FROM {} t{join} WHERE {filter} AND {changed}{order}",
            table.name
        );
        let rows =
            tx.query(&statement, params).await.map_err(sql_error(&format!("reading {}", table.name)))?;
        out.push((table, rows));
    }
    // Written in foreign-key order.
    out.reverse();
    Ok(out)
}

/// Prefixes a `changed` predicate's columns with the table alias `t`.
fn qualify(predicate: &str) -> String {
    let mut out = String::new();
    for (i, word) in predicate.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let bare = word.trim_start_matches('(');
        let opened = &word[..word.len() - bare.len()];
        if bare.chars().next().is_some_and(|c| c.is_ascii_lowercase()) && !matches!(bare, "OR" | "AND") {
            out.push_str(opened);
            out.push_str("t.");
            out.push_str(bare);
        } else {
            out.push_str(word);
        }
    }
    out
}

/// Writes rows read by [`read_changed`] to `target`.
pub async fn write_rows(
    target: &Shard,
    merchant: i64,
    read: Vec<(&'static Table, RowSet)>,
    fresh: bool,
) -> anyhow::Result<Copied> {
    let dialect = target.dialect();
    let mut copied = Copied::default();
    for (table, rows) in read {
        let count = rows.rows.len() as u64;
        copied.rows += count;
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
            if table.name == "processed_events" {
                row[3] = Value::Int64(merchant);
            }
            data.push(row);
        }
        for batch in batches(table, &data) {
            let mut tx = target.begin(true).await.map_err(sql_error("opening a write on the target"))?;
            let result = write_batch(&mut tx, dialect, table, &batch, fresh).await;
            match result {
                Ok(()) => tx.commit().await.map_err(sql_error(&format!("committing {}", table.name)))?,
                Err(e) => {
                    tx.rollback().await;
                    return Err(e);
                }
            }
        }
        if !superseded.is_empty() {
            point_superseded(target, &superseded).await?;
        }
    }
    Ok(copied)
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
async fn point_superseded(target: &Shard, superseded: &[(Value, Value)]) -> anyhow::Result<()> {
    for chunk in superseded.chunks(ROWS_PER_STATEMENT) {
        let mut tx = target.begin(true).await.map_err(sql_error("opening a write on the target"))?;
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
        tx.commit().await.map_err(sql_error("committing superseded outbox rows"))?;
    }
    Ok(())
}

/// One side's figures for `merchant`: per table, the row count and sums.
pub async fn figures(shard: &Shard, merchant: i64) -> anyhow::Result<Vec<(&'static str, String)>> {
    let mut tx = shard.begin(false).await.map_err(sql_error("opening a read"))?;
    let mut out = Vec::with_capacity(TABLES.len());
    let mut result = Ok(());
    for table in &TABLES {
        // As integers: a sum of BIGINT is DECIMAL on MariaDB and NUMERIC
        // on PostgreSQL.
        let integer = if shard.dialect() == Dialect::Mysql { "SIGNED" } else { "BIGINT" };
        let mut select = vec!["COUNT(*)".to_string()];
        select.extend(table.sums.iter().map(|s| format!("CAST(COALESCE(SUM({s}), 0) AS {integer})")));
        let statement =
            format!("SELECT {} FROM {} WHERE {}", select.join(", "), table.name, table.merchant_rows(""));
        match tx.query(&statement, table.merchant_params(merchant)).await {
            Ok(rows) => out.push((table.name, format!("{:?}", rows.rows))),
            Err(e) => {
                result = Err(sql_error(&format!("summing {}", table.name))(e));
                break;
            }
        }
    }
    tx.rollback().await;
    result.map(|()| out)
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
/// (referencing tables first). Returns how many.
pub async fn delete_merchant(shard: &Shard, merchant: i64) -> anyhow::Result<u64> {
    let mut deleted = 0;
    // Processed ids are found through the outbox: before it.
    for table in TABLES.iter().rev() {
        loop {
            let filter = table.merchant_rows("");
            let statement = match shard.dialect() {
                Dialect::Sqlite => format!(
                    "DELETE FROM {0} WHERE rowid IN (SELECT rowid FROM {0} WHERE {filter} LIMIT {DELETE_CHUNK})",
                    table.name
                ),
                Dialect::Mysql => format!("DELETE FROM {} WHERE {filter} LIMIT {DELETE_CHUNK}", table.name),
                Dialect::Postgres => format!(
                    "DELETE FROM {0} WHERE ctid = ANY (ARRAY (SELECT ctid FROM {0} WHERE {filter} LIMIT {DELETE_CHUNK}))",
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
            if n < DELETE_CHUNK as u64 {
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
    let mut tx = shard.begin(false).await.map_err(sql_error("opening a read"))?;
    let probe = tx.query("SELECT COUNT(*) FROM moving_merchants", Vec::new()).await;
    tx.rollback().await;
    probe.map_err(sql_error(&format!("shard `{}` lacks the moves table (migrate it)", shard.name)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_are_qualified() {
        assert_eq!(qualify("updated_at >= ?"), "t.updated_at >= ?");
        assert_eq!(
            qualify("(created_at >= ? OR published_at >= ? OR last_retry_at >= ? OR published = 0)"),
            "(t.created_at >= ? OR t.published_at >= ? OR t.last_retry_at >= ? OR t.published = 0)"
        );
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
        let mut seen = std::collections::HashSet::new();
        for batch in &batches {
            let here: std::collections::HashSet<String> = batch.iter().filter_map(|r| text(&r[0])).collect();
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
