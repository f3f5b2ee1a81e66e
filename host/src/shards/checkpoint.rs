//! Checkpoints of a SQLite shard's WAL (or the embedded event log's), on a
//! thread of their own.
//!
//! By default SQLite checkpoints inside the COMMIT that takes the WAL past
//! 1,000 pages: that COMMIT copies the pages into the database file and
//! fsyncs it while it holds the shard's only writer, so every invocation
//! queued behind it waits. Under load that is many times a second. The
//! writer connection runs with `wal_autocheckpoint = 0` instead, and this
//! thread runs a PASSIVE checkpoint every [`INTERVAL`] on a connection of
//! its own: PASSIVE never takes the write lock, so writers and readers go
//! on while it copies.
//!
//! Durability is SQLite's own: with `synchronous = FULL` the checkpointer
//! syncs the WAL before it copies frames and the database file after, and
//! a commit is durable once its COMMIT (WAL fsync) returned, checkpointed
//! or not. The WAL starts over from its beginning once a checkpoint has
//! copied all of it (the next writer resets it), so it stays about one
//! interval's worth of writes long.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

/// How often the WAL is copied into the database file.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// The checkpoint thread of one shard; stops when dropped.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Starts checkpointing the shard file at `path` (already in WAL mode).
    pub fn start(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        std::thread::Builder::new().name(format!("checkpoint {name}")).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(INTERVAL);
                // (busy, WAL pages, pages copied); a busy or failed round is
                // retried at the next interval.
                let round = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                });
                if let Err(e) = round {
                    tracing::warn!(file = %name, error = %e, "WAL checkpoint failed; retrying");
                }
            }
        })?;
        Ok(Self { stop })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
