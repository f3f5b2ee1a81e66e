//! What one firing sends, decided from the window of pending rows alone:
//! pure, so the ordering rules are tested without a shard or a broker.
//!
//! Invariants (each asserted by the tests below):
//! - Per aggregate, rows are sent in id order (the shard's commit order for
//!   one aggregate: every step that writes an aggregate's event holds that
//!   aggregate's row lock), and wave `k + 1` holds an aggregate's row only if
//!   its row in wave `k` was acknowledged, so a failure never lets a later
//!   event of the same aggregate overtake it.
//! - A row waiting out a backoff holds back every later row of its
//!   aggregate in the window.
//! - Snapshot aggregates (whose events each carry the aggregate's whole
//!   state) send only their newest row in the window; the older ones are
//!   superseded by it and never sent.

use std::collections::HashMap;

/// A pending outbox row, as far as planning needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    pub aggregate_id: String,
    pub event_type: String,
    /// When a row that failed may be tried again (epoch ms; 0 for a new row).
    pub next_attempt_at_ms: i64,
}

/// What a firing does with its window.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Per aggregate, the rows to send in order (indexes into the window).
    /// Wave `k` is the `k`-th row of every run still going.
    pub runs: Vec<Vec<usize>>,
    /// `(row, newer row)`: snapshot rows whose state a newer row carries.
    pub superseded: Vec<(usize, usize)>,
    /// Rows held back this firing (a backoff on them or an earlier row).
    pub held: usize,
}

/// Plans `window` (pending rows in id order) at `now_ms`; event types in
/// `snapshot_types` coalesce to their aggregate's newest row.
pub fn plan(window: &[Pending], now_ms: i64, snapshot_types: &[String]) -> Plan {
    assert!(window.windows(2).all(|w| w[0].id < w[1].id), "the window is in id order");
    let is_snapshot = |row: &Pending| snapshot_types.contains(&row.event_type);

    // Rows of each aggregate, in id order; aggregates in order of first row.
    let mut order: Vec<&str> = Vec::new();
    let mut rows_of: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, row) in window.iter().enumerate() {
        rows_of
            .entry(row.aggregate_id.as_str())
            .or_insert_with(|| {
                order.push(row.aggregate_id.as_str());
                Vec::new()
            })
            .push(index);
    }

    let mut plan = Plan::default();
    for aggregate in order {
        let rows = &rows_of[aggregate];
        let newest = *rows.last().expect("an aggregate has at least one row");
        let mut run = Vec::new();
        if rows.iter().all(|&i| is_snapshot(&window[i])) {
            plan.superseded.extend(rows[..rows.len() - 1].iter().map(|&i| (i, newest)));
            if window[newest].next_attempt_at_ms <= now_ms {
                run.push(newest);
            } else {
                plan.held += 1;
            }
        } else {
            // Rows of mixed kinds keep every row: order is all that is safe.
            for (position, &i) in rows.iter().enumerate() {
                if window[i].next_attempt_at_ms > now_ms {
                    plan.held += rows.len() - position;
                    break;
                }
                run.push(i);
            }
        }
        if !run.is_empty() {
            plan.runs.push(run);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, aggregate: &str, event_type: &str, next_attempt_at_ms: i64) -> Pending {
        Pending { id, aggregate_id: aggregate.into(), event_type: event_type.into(), next_attempt_at_ms }
    }

    fn snapshots() -> Vec<String> {
        vec!["settlement.updated".to_string()]
    }

    #[test]
    fn a_run_of_one_aggregate_goes_out_in_order_in_one_firing() {
        let window = [
            row(1, "pay_a", "payment.authorized", 0),
            row(2, "pay_b", "payment.authorized", 0),
            row(3, "pay_a", "payment.captured", 0),
            row(4, "pay_a", "payment.refunded", 0),
        ];
        let plan = plan(&window, 100, &snapshots());
        assert_eq!(plan.runs, vec![vec![0, 2, 3], vec![1]]);
        assert!(plan.superseded.is_empty());
        assert_eq!(plan.held, 0);
    }

    #[test]
    fn a_row_in_backoff_holds_back_the_rest_of_its_aggregate_only() {
        let window = [
            row(1, "pay_a", "payment.authorized", 0),
            row(2, "pay_a", "payment.captured", 500),
            row(3, "pay_b", "payment.authorized", 0),
            row(4, "pay_a", "payment.refunded", 0),
        ];
        let plan = plan(&window, 100, &snapshots());
        assert_eq!(plan.runs, vec![vec![0], vec![2]]);
        assert_eq!(plan.held, 2);
        // Once the backoff has passed, the rest goes in order.
        let later = super::plan(&window, 500, &snapshots());
        assert_eq!(later.runs, vec![vec![0, 1, 3], vec![2]]);
    }

    #[test]
    fn snapshots_coalesce_to_the_newest_row() {
        let window = [
            row(1, "stl_1", "settlement.updated", 0),
            row(2, "pay_a", "payment.captured", 0),
            row(3, "stl_1", "settlement.updated", 0),
            row(4, "stl_1", "settlement.updated", 900),
            row(5, "stl_2", "settlement.updated", 0),
        ];
        let plan = plan(&window, 100, &snapshots());
        assert_eq!(plan.superseded, vec![(0, 3), (2, 3)]);
        // The newest of stl_1 is in backoff: held, its elders still superseded.
        assert_eq!(plan.runs, vec![vec![1], vec![4]]);
        assert_eq!(plan.held, 1);
        // Without the snapshot rule every row goes, in order.
        let plain = super::plan(&window, 1000, &[]);
        assert_eq!(plain.runs, vec![vec![0, 2, 3], vec![1], vec![4]]);
        assert!(plain.superseded.is_empty());
    }

    #[test]
    fn an_aggregate_with_other_events_is_never_coalesced() {
        let window = [
            row(1, "x", "settlement.updated", 0),
            row(2, "x", "payment.captured", 0),
            row(3, "x", "settlement.updated", 0),
        ];
        let plan = plan(&window, 0, &snapshots());
        assert_eq!(plan.runs, vec![vec![0, 1, 2]]);
        assert!(plan.superseded.is_empty());
    }

    #[test]
    #[should_panic(expected = "id order")]
    fn a_window_out_of_order_is_a_bug() {
        plan(&[row(2, "a", "t", 0), row(1, "a", "t", 0)], 0, &[]);
    }
}
