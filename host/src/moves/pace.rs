//! How fast a move's bulk work goes: the `[moves]` section of the runtime
//! config, and the pacing every page of a copying round and every chunk
//! of a delete goes through, so that the shards keep serving every other
//! merchant while a large one moves.
//!
//! Two rules, the first as the retention purge's and gh-ost's nice ratio:
//!
//! - after a page, rest at least as long as it took (and at least
//!   `pause`): a move keeps a shard busy at most half the time, and slows
//!   down as the shard does;
//! - before a page, wait while more than half of either shard's
//!   connections on this host are in transactions: requests go first. The
//!   wait is bounded ([`MOST_YIELDED`]) so that a move always progresses.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::shards::{PoolUse, Shard};

/// The most a page waits for a busy shard before it runs anyway.
pub const MOST_YIELDED: Duration = Duration::from_secs(1);
/// How often a waiting page looks at the shards again.
const YIELD_STEP: Duration = Duration::from_millis(10);

/// The `[moves]` section, validated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawMoves")]
pub struct MovesConfig {
    /// Rows per page of a copying round (a statement reads at most this
    /// many, and a transaction writes about this many) and per chunk of a
    /// delete.
    pub page_rows: usize,
    /// Least rest between two pages.
    pub pause: Duration,
}

impl Default for MovesConfig {
    fn default() -> Self {
        RawMoves::default().try_into().expect("the default [moves] is valid")
    }
}

/// The section as written.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawMoves {
    // Signed, so that a negative value gets this module's message.
    page_rows: i64,
    pause: String,
}

impl Default for RawMoves {
    fn default() -> Self {
        Self { page_rows: 2_000, pause: "10ms".into() }
    }
}

/// Above, a page is a long transaction (on SQLite every write of the
/// target shard waits for it). Small pages are slow, not wrong.
const PAGE_ROWS: (i64, i64) = (1, 10_000);
const PAUSE_BOUNDS: (&str, &str) = ("1ms", "1m");

impl TryFrom<RawMoves> for MovesConfig {
    type Error = String;

    fn try_from(raw: RawMoves) -> Result<Self, String> {
        let (least, most) = PAGE_ROWS;
        if !(least..=most).contains(&raw.page_rows) {
            return Err(format!(
                "invalid [moves] page_rows = {}: it must be between {least} and {most}",
                raw.page_rows
            ));
        }
        Ok(Self {
            page_rows: raw.page_rows as usize,
            pause: crate::runtime_config::bounded_duration("moves", "pause", &raw.pause, PAUSE_BOUNDS)?,
        })
    }
}

impl MovesConfig {
    /// Waits until neither shard is busy with requests, or [`MOST_YIELDED`].
    pub async fn wait_for_room(&self, shards: &[&Shard]) {
        let deadline = Instant::now() + MOST_YIELDED;
        while shards.iter().any(|s| busy(s.pool_use())) && Instant::now() < deadline {
            tokio::time::sleep(YIELD_STEP).await;
        }
    }

    /// Rests after a page that took `took`.
    pub async fn rest_after(&self, took: Duration) {
        tokio::time::sleep(took.max(self.pause)).await;
    }
}

/// More than half of the shard's connections are in transactions.
fn busy(pool: PoolUse) -> bool {
    pool.in_use.saturating_mul(2) > pool.max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MovesConfig, String> {
        toml::from_str::<MovesConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_every_key_is_read() {
        assert_eq!(parse("").unwrap(), MovesConfig { page_rows: 2_000, pause: Duration::from_millis(10) });
        assert_eq!(
            parse("page_rows = 500\npause = \"50ms\"").unwrap(),
            MovesConfig { page_rows: 500, pause: Duration::from_millis(50) }
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        for (section, expected) in [
            ("page_rows = 0", "invalid [moves] page_rows = 0: it must be between 1 and 10000"),
            ("page_rows = -3", "invalid [moves] page_rows = -3"),
            ("page_rows = 50000", "invalid [moves] page_rows = 50000"),
            ("pause = \"0s\"", "invalid [moves] pause = \"0s\""),
            ("pause = \"10\"", "invalid [moves] pause = \"10\": time unit needed"),
            ("throttle = 1", "unknown field `throttle`"),
        ] {
            let err = parse(section).unwrap_err();
            assert!(err.contains(expected), "{section}: {err}");
        }
    }

    #[test]
    fn a_shard_is_busy_past_half_its_connections() {
        let pool = |in_use, max| PoolUse { in_use, open: max, max };
        assert!(!busy(pool(0, 32)));
        assert!(!busy(pool(16, 32)));
        assert!(busy(pool(17, 32)));
        // A SQLite shard: four readers and the writer.
        assert!(!busy(pool(2, 5)));
        assert!(busy(pool(3, 5)));
    }

    #[tokio::test]
    async fn a_page_is_followed_by_as_long_a_rest_and_at_least_the_pause() {
        let pace = MovesConfig { page_rows: 100, pause: Duration::from_millis(10) };
        for (took, rest) in [(300, 300), (2, 10), (0, 10)] {
            let started = tokio::time::Instant::now();
            pace.rest_after(Duration::from_millis(took)).await;
            // A sleep lasts at least as long as asked: only the bound is exact.
            assert!(started.elapsed() >= Duration::from_millis(rest), "after a page of {took} ms");
        }
    }
}
