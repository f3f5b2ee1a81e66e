//! What each shard holds (`payfn shards status`) and which merchants to
//! move to even it out (`payfn shards rebalance --plan`).
//!
//! A shard's load is its payments: the rows every step reads and writes
//! and what settlement and the relay work through. The plan aims each shard
//! at its share of the total by its placement weight (shards closed to new
//! merchants aim at none: a rebalance also empties a shard being retired).
//! It moves the largest merchant that fits the gap, one at a time, so it
//! never overshoots and the fewest moves carry the most load.

use std::collections::BTreeMap;

use serde::Serialize;

use super::copy::sql_error;
use crate::bindings::sql::{Dialect, Value};
use crate::directory::Directory;
use crate::shards::Shard;

/// Moves in one plan, at most.
const MAX_PLANNED: usize = 100;

/// One shard's figures.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardFigures {
    pub name: String,
    pub dialect: String,
    pub accept_new: bool,
    pub weight: u64,
    /// Merchants the directory has on it.
    pub merchants: i64,
    /// Payments rows on it.
    pub payments: i64,
    /// The database's size in bytes (SQLite: the file; MariaDB: the
    /// schema's tables and indexes; PostgreSQL: the database).
    pub bytes: i64,
    /// Payments per merchant, largest first (for the plan).
    #[serde(skip)]
    pub by_merchant: Vec<(i64, i64)>,
}

/// One planned move.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlannedMove {
    pub merchant: i64,
    pub from: String,
    pub to: String,
    pub payments: i64,
}

/// Reads every shard's figures.
pub async fn figures(directory: &Directory) -> anyhow::Result<Vec<ShardFigures>> {
    let per_shard = directory.store().merchants_per_shard().await?;
    let shards = directory.shards();
    let mut out = Vec::new();
    for (index, shard) in shards.iter().enumerate() {
        let (payments, bytes, by_merchant) = match read_shard(shard).await {
            Ok(figures) => figures,
            Err(e) => {
                tracing::warn!(shard = %shard.name, "cannot read the shard's figures: {e:#}");
                (-1, -1, Vec::new())
            }
        };
        out.push(ShardFigures {
            name: shard.name.clone(),
            dialect: match shard.dialect() {
                Dialect::Sqlite => "sqlite",
                Dialect::Mysql => "mysql",
                Dialect::Postgres => "postgres",
            }
            .to_string(),
            accept_new: shards.weight_for_new(index) > 0,
            weight: shards.weight_for_new(index),
            merchants: per_shard.get(&shard.name).copied().unwrap_or(0),
            payments,
            bytes,
            by_merchant,
        });
    }
    Ok(out)
}

async fn read_shard(shard: &Shard) -> anyhow::Result<(i64, i64, Vec<(i64, i64)>)> {
    let mut tx = shard.begin(false).await.map_err(sql_error("opening a read"))?;
    let size = match shard.dialect() {
        Dialect::Sqlite => "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        Dialect::Mysql => {
            "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS SIGNED) FROM information_schema.tables \
             WHERE table_schema = DATABASE()"
        }
        Dialect::Postgres => "SELECT pg_database_size(current_database())",
    };
    let figures = async {
        let by_merchant = tx
            .scan(
                "SELECT merchant_id, COUNT(*) AS n FROM payments GROUP BY merchant_id ORDER BY n DESC, merchant_id",
                Vec::new(),
            )
            .await
            .map_err(sql_error("counting payments per merchant"))?;
        let bytes = tx.query(size, Vec::new()).await.map_err(sql_error("reading the database's size"))?;
        let by_merchant: Vec<(i64, i64)> =
            by_merchant.rows.iter().filter_map(|row| Some((int(row.first()?)?, int(row.get(1)?)?))).collect();
        let bytes = bytes.rows.first().and_then(|row| int(row.first()?)).unwrap_or(-1);
        anyhow::Ok((by_merchant.iter().map(|(_, n)| n).sum(), bytes, by_merchant))
    }
    .await;
    tx.rollback().await;
    figures
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int64(n) => Some(*n),
        Value::Float64(f) => Some(*f as i64),
        Value::Text(t) => t.parse().ok(),
        _ => None,
    }
}

/// The moves that bring each shard nearest its share, largest merchants
/// first, none overshooting.
pub fn plan(shards: &[ShardFigures]) -> Vec<PlannedMove> {
    let total: i64 = shards.iter().map(|s| s.payments.max(0)).sum();
    let weights: u64 = shards.iter().map(|s| s.weight).sum();
    if total == 0 || weights == 0 {
        return Vec::new();
    }
    let share = |s: &ShardFigures| (total as i128 * s.weight as i128 / weights as i128) as i64;
    let mut load: Vec<i64> = shards.iter().map(|s| s.payments.max(0)).collect();
    // Merchants still on each shard, largest first.
    let mut left: Vec<Vec<(i64, i64)>> = shards.iter().map(|s| s.by_merchant.clone()).collect();
    let mut planned = Vec::new();
    while planned.len() < MAX_PLANNED {
        let excess = |i: usize| load[i] - share(&shards[i]);
        let Some(from) = (0..shards.len()).max_by_key(|&i| (excess(i), std::cmp::Reverse(i))) else { break };
        let Some(to) = (0..shards.len()).filter(|&i| shards[i].weight > 0).min_by_key(|&i| (excess(i), i))
        else {
            break;
        };
        let gap = excess(from).min(-excess(to));
        if from == to || gap <= 0 {
            break;
        }
        // The largest merchant that fits the gap: moving it makes both
        // shards nearer their shares.
        let Some(pick) = left[from].iter().position(|&(_, n)| n > 0 && n <= gap) else { break };
        let (merchant, payments) = left[from].remove(pick);
        load[from] -= payments;
        load[to] += payments;
        planned.push(PlannedMove {
            merchant,
            from: shards[from].name.clone(),
            to: shards[to].name.clone(),
            payments,
        });
    }
    planned
}

/// Payments per shard after `moves`, for the plan's summary.
pub fn after(shards: &[ShardFigures], moves: &[PlannedMove]) -> BTreeMap<String, i64> {
    let mut load: BTreeMap<String, i64> =
        shards.iter().map(|s| (s.name.clone(), s.payments.max(0))).collect();
    for m in moves {
        *load.entry(m.from.clone()).or_default() -= m.payments;
        *load.entry(m.to.clone()).or_default() += m.payments;
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(name: &str, weight: u64, merchants: &[(i64, i64)]) -> ShardFigures {
        ShardFigures {
            name: name.into(),
            dialect: "sqlite".into(),
            accept_new: weight > 0,
            weight,
            merchants: merchants.len() as i64,
            payments: merchants.iter().map(|(_, n)| n).sum(),
            bytes: 0,
            by_merchant: merchants.to_vec(),
        }
    }

    #[test]
    fn a_new_shard_gets_its_share() {
        let shards = [
            shard("a", 1, &[(1, 500), (3, 300), (5, 100)]),
            shard("b", 1, &[(2, 600), (4, 300)]),
            shard("c", 1, &[]),
        ];
        let moves = plan(&shards);
        let load = after(&shards, &moves);
        // 1,800 payments: 600 each is the share.
        assert!(moves.iter().all(|m| m.to == "c"), "{moves:?}");
        assert!(load["c"] >= 500 && load["a"] <= 700 && load["b"] <= 700, "{load:?}");
    }

    #[test]
    fn a_closed_shard_is_emptied_and_balance_is_left_alone() {
        let shards =
            [shard("a", 1, &[(1, 100)]), shard("b", 1, &[(2, 100)]), shard("old", 0, &[(3, 50), (5, 50)])];
        let moves = plan(&shards);
        assert_eq!(after(&shards, &moves)["old"], 0, "{moves:?}");
        let balanced = [shard("a", 1, &[(1, 100)]), shard("b", 1, &[(2, 100)])];
        assert!(plan(&balanced).is_empty());
    }

    #[test]
    fn a_merchant_larger_than_the_gap_stays() {
        let shards = [shard("a", 1, &[(1, 1_000)]), shard("b", 1, &[])];
        assert!(plan(&shards).is_empty(), "moving the only merchant would only swap the imbalance");
    }
}
