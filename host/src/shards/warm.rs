//! Server-shard connections kept between transactions, off sqlx's pool.
//!
//! sqlx pings every connection that goes back to its pool, to flush what a
//! cancelled query may have left on it. Under load that is a network round
//! trip, and a wake-up of the database server, per transaction: one in six
//! of an authorize's on MariaDB. A transaction that ended cleanly (its
//! COMMIT or ROLLBACK answered) leaves nothing to flush, so its connection
//! is parked here instead and the next transaction takes it, most recently
//! used first. Anything else goes back through sqlx as before.
//!
//! Invariant: at most `size` connections are out of sqlx's pool at once,
//! parked or in a transaction, because each is held under a permit of
//! [`Warm::permits`] (as many as the pool's `max_connections`). A permit
//! holder therefore either finds a parked connection or gets one from sqlx
//! without waiting behind parked ones.
//!
//! A parked connection idle longer than [`PING_IF_IDLE_FOR`], or held out
//! of sqlx longer than the pool's `max_lifetime`, goes back to sqlx instead
//! of into a transaction, so idle and lifetime limits and the idle ping
//! stay sqlx's (server.rs, `pool_options`). Once traffic stops, the last
//! connections stay parked until the next transaction hands them back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::{Pool, PoolConnection};
use sqlx::Database;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A parked connection used more recently than this goes straight into the
/// next transaction; an older one is pinged by sqlx first.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The parked connections of one shard.
pub struct Warm<DB: Database> {
    size: u32,
    permits: Arc<Semaphore>,
    parked: Mutex<Vec<Parked<DB>>>,
    acquire_timeout: Duration,
    max_lifetime: Duration,
}

struct Parked<DB: Database> {
    conn: PoolConnection<DB>,
    /// When it was parked.
    since: Instant,
    /// When it last came out of sqlx's pool.
    out_since: Instant,
}

/// A connection out of sqlx's pool, and the permit it is held under.
pub struct Held<DB: Database> {
    pub conn: PoolConnection<DB>,
    out_since: Instant,
    _permit: OwnedSemaphorePermit,
}

impl<DB: Database> Warm<DB> {
    /// For a pool of `size` connections.
    pub fn new(size: u32, acquire_timeout: Duration, max_lifetime: Duration) -> Self {
        Self {
            size: size.max(1),
            permits: Arc::new(Semaphore::new(size.max(1) as usize)),
            parked: Mutex::new(Vec::new()),
            acquire_timeout,
            max_lifetime,
        }
    }

    /// A parked connection, or one from `pool`. Waiting past the acquire
    /// timeout is sqlx's `PoolTimedOut`, as it would be inside sqlx.
    pub async fn acquire(&self, pool: &Pool<DB>) -> Result<Held<DB>, sqlx::Error> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        while let Some(parked) = self.pop() {
            if parked.since.elapsed() < PING_IF_IDLE_FOR && parked.out_since.elapsed() < self.max_lifetime {
                return Ok(Held { conn: parked.conn, out_since: parked.out_since, _permit: permit });
            }
            // Back through sqlx: its ping, idle and lifetime rules apply.
            drop(parked.conn);
        }
        // Within the permit sqlx has a connection for us, or room for one.
        // (sqlx applies the same acquire timeout.)
        let conn = pool.acquire().await?;
        Ok(Held { conn, out_since: Instant::now(), _permit: permit })
    }

    /// Parks `held`, whose transaction ended cleanly; hands connections
    /// parked too long back to sqlx.
    pub fn park(&self, held: Held<DB>) {
        let Held { conn, out_since, _permit } = held;
        let parked = Parked { conn, since: Instant::now(), out_since };
        let stale: Vec<Parked<DB>> = {
            let mut list = self.parked.lock().unwrap_or_else(|p| p.into_inner());
            // Oldest first: the stale ones are a prefix.
            let fresh = list.iter().position(|p| p.since.elapsed() < PING_IF_IDLE_FOR).unwrap_or(list.len());
            let stale = list.drain(..fresh).collect();
            list.push(parked);
            stale
        };
        drop(stale);
        // `_permit` drops after the push: whoever it admits finds the connection.
    }

    /// Connections in a transaction now (each holds a permit), of at most
    /// `size`.
    pub fn in_use(&self) -> (u32, u32) {
        let free = u32::try_from(self.permits.available_permits()).unwrap_or(self.size);
        (self.size.saturating_sub(free), self.size)
    }

    fn pop(&self) -> Option<Parked<DB>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }
}
