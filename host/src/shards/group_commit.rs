//! Group commit for a SQLite shard: many invocations' writes, one fsync.
//!
//! SQLite admits one writer, and with `synchronous = FULL` every COMMIT
//! waits for an fsync of the WAL: about 730 commits a second on this class
//! of disk, whatever the CPU could do. So write invocations share one open
//! transaction on the shard's writer connection. Each runs inside its own
//! SAVEPOINT (its writes stay all-or-nothing on their own), and a flusher
//! task COMMITs the group once the members queued behind the first are
//! through. One fsync then acknowledges every member of the group.
//!
//! Invariants (asserted by the tests in `tests/durability.rs` and below):
//! - a member's [`Member::commit`] returns `Ok` only after the COMMIT that
//!   holds its writes returned, so an acknowledged write is durable;
//! - a member's writes are in the group whole (RELEASE) or not at all
//!   (ROLLBACK TO), whatever the other members do;
//! - when a group's COMMIT fails, every member of it gets the error, so no
//!   member is acknowledged on the strength of another member's lost write.
//!
//! The cost: a member's answer waits for the members queued ahead of the
//! flusher (one group's worth of invocations, a few milliseconds under
//! load), and a member sees its group's earlier, not yet durable, writes,
//! exactly as it would after they committed. Readers (the other pool) see
//! only durable data, and so does a member begun with
//! [`GroupWriter::begin_durable`] (the timer trigger's, whose outbox relay
//! publishes what it reads: DESIGN.md's "no event published without a
//! committed row").

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{oneshot, Mutex, Notify, OwnedMutexGuard};

use super::sqlite::{blocking, map_error};
use crate::bindings::sql::Error as SqlError;

/// The savepoint every member runs in. One name does: members never nest,
/// since each holds the writer alone.
const SAVEPOINT: &str = "payfn_invocation";

/// The writer connection of one shard, shared by write invocations in groups.
pub struct GroupWriter {
    group: Arc<Mutex<Group>>,
    flush: Arc<Notify>,
    flusher: tokio::task::JoinHandle<()>,
    acquire_timeout: Duration,
    /// Members waiting for the writer now (the flusher not counted).
    queued: AtomicUsize,
    counts: Arc<GroupCounts>,
}

/// What the writer has committed since it opened: how many COMMITs, and how
/// many members they acknowledged. Members over commits is the mean group
/// size, the whole point of grouping (exported as metrics).
#[derive(Debug, Default)]
pub struct GroupCounts {
    commits: AtomicU64,
    members: AtomicU64,
}

impl GroupCounts {
    /// `(commits, members acknowledged by them)`.
    pub fn get(&self) -> (u64, u64) {
        // Members first, commits after (a commit counts itself the other
        // way round): both only grow, so the pair never shows more members
        // per commit than there were.
        let members = self.members.load(Ordering::Acquire);
        (self.commits.load(Ordering::Acquire), members)
    }
}

/// The writer connection and the group open on it.
struct Group {
    conn: Connection,
    /// A BEGIN IMMEDIATE is open: the file's write lock is held.
    open: bool,
    /// Members whose writes are released into the open transaction, each
    /// waiting to hear how its COMMIT went.
    waiting: Vec<oneshot::Sender<Result<(), SqlError>>>,
    counts: Arc<GroupCounts>,
}

/// One write invocation's hold on the writer: its savepoint is open.
pub struct Member {
    group: Option<OwnedMutexGuard<Group>>,
    flush: Arc<Notify>,
    /// Set once the group was failed under this member: it may not write
    /// again (SQLite may have left the transaction, and further statements
    /// would autocommit one by one).
    poisoned: bool,
}

impl GroupWriter {
    /// Whether a member or the flusher holds the writer now.
    pub fn busy(&self) -> bool {
        self.group.try_lock().is_err()
    }

    /// Takes `conn` (migrated, WAL, `synchronous = FULL`) as the writer and
    /// starts its flusher task.
    pub fn new(conn: Connection, acquire_timeout: Duration) -> Self {
        let counts = Arc::new(GroupCounts::default());
        let group =
            Arc::new(Mutex::new(Group { conn, open: false, waiting: Vec::new(), counts: counts.clone() }));
        let flush = Arc::new(Notify::new());
        let flusher = tokio::spawn(flusher(Arc::downgrade(&group), flush.clone()));
        Self { group, flush, flusher, acquire_timeout, queued: AtomicUsize::new(0), counts }
    }

    /// How many would-be members are waiting for the writer now (tests
    /// queue members behind a held writer with it instead of sleeping).
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The COMMITs so far and the members they acknowledged.
    pub fn counts(&self) -> &GroupCounts {
        &self.counts
    }

    /// Waits for the writer (FIFO), joins the open group or opens one, and
    /// starts the member's savepoint.
    pub async fn begin(&self) -> Result<Member, SqlError> {
        let group = self.writer().await?;
        self.join(group)
    }

    /// Like [`begin`](Self::begin), but the member sees durable data only:
    /// the open group is committed first (its members are acknowledged
    /// early) and the member starts a group of its own. For members that
    /// tell the world what they read (the outbox relay publishes rows), so
    /// nothing a crash could still undo leaves the shard.
    pub async fn begin_durable(&self) -> Result<Member, SqlError> {
        let mut group = self.writer().await?;
        group.commit();
        assert!(!group.open, "a durable member must start a group of its own");
        self.join(group)
    }

    async fn writer(&self) -> Result<OwnedMutexGuard<Group>, SqlError> {
        /// Counts the wait out however it ends (a caller may be cancelled).
        struct Queued<'a>(&'a AtomicUsize);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _queued = Queued(&self.queued);
        tokio::time::timeout(self.acquire_timeout, self.group.clone().lock_owned())
            .await
            .map_err(|_| SqlError::Unavailable("the shard's writer stayed busy; try again".into()))
    }

    fn join(&self, mut group: OwnedMutexGuard<Group>) -> Result<Member, SqlError> {
        if !group.open {
            // May wait for another process's write lock (busy timeout).
            blocking(|| group.conn.execute_batch("BEGIN IMMEDIATE")).map_err(map_error)?;
            group.open = true;
        }
        if let Err(e) = group.conn.execute_batch(&format!("SAVEPOINT {SAVEPOINT}")) {
            let e = map_error(e);
            group.fail(e.clone());
            return Err(e);
        }
        Ok(Member { group: Some(group), flush: self.flush.clone(), poisoned: false })
    }
}

impl Drop for GroupWriter {
    fn drop(&mut self) {
        self.flusher.abort();
    }
}

impl Member {
    /// The writer connection, inside this member's savepoint.
    pub fn conn(&mut self) -> Result<&Connection, SqlError> {
        match self.group.as_ref() {
            Some(_) if self.poisoned => Err(SqlError::Unavailable("the shard's transaction failed".into())),
            Some(group) => Ok(&group.conn),
            None => Err(SqlError::Unavailable("the transaction has ended".into())),
        }
    }

    /// Called with a statement's error. An error that is not the statement's
    /// own (I/O, a full disk, a lost lock) may have ended SQLite's
    /// transaction, so the whole group fails, and this member with it.
    pub fn check(&mut self, e: &SqlError) {
        if matches!(e, SqlError::ConstraintViolation(_) | SqlError::InvalidStatement(_)) {
            return;
        }
        if let Some(group) = self.group.as_mut() {
            self.poisoned = true;
            group.fail(e.clone());
        }
    }

    /// Releases the member's writes into the group and waits for the group's
    /// durable COMMIT.
    pub async fn commit(mut self) -> Result<(), SqlError> {
        let Some(mut group) = self.group.take() else {
            return Err(SqlError::Unavailable("the transaction has ended".into()));
        };
        if self.poisoned {
            return Err(SqlError::Unavailable("the shard's transaction failed".into()));
        }
        if let Err(e) = group.conn.execute_batch(&format!("RELEASE {SAVEPOINT}")) {
            group.rollback_member();
            drop(group);
            self.flush.notify_one();
            return Err(map_error(e));
        }
        let (done, outcome) = oneshot::channel();
        group.waiting.push(done);
        // Let the next queued member in; the flusher commits once it gets
        // the writer, after everyone queued before it.
        drop(group);
        self.flush.notify_one();
        outcome.await.unwrap_or_else(|_| Err(SqlError::Unavailable("the shard's writer stopped".into())))
    }

    /// Undoes the member's writes; the group goes on without them.
    pub fn rollback(self) {
        // Drop does it.
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Rolled back, or cancelled mid-run (its request went away): either
        // way its writes leave the group before anyone else writes.
        if let Some(mut group) = self.group.take() {
            if !self.poisoned {
                group.rollback_member();
            }
            drop(group);
            // A group left open with nobody queued must still end: it holds
            // the file's write lock.
            self.flush.notify_one();
        }
    }
}

impl Group {
    /// ROLLBACK TO and RELEASE the member's savepoint; if even that fails,
    /// the transaction is beyond repair and the whole group fails.
    fn rollback_member(&mut self) {
        let undo = format!("ROLLBACK TO {SAVEPOINT}; RELEASE {SAVEPOINT}");
        if let Err(e) = self.conn.execute_batch(&undo) {
            tracing::error!(error = %e, "cannot roll back one invocation's savepoint; failing its group");
            self.fail(map_error(e));
        }
    }

    /// Commits the open group (if any) and tells every waiting member.
    fn commit(&mut self) {
        if !self.open {
            return;
        }
        // The fsync: seconds at worst, off the async workers.
        match blocking(|| self.conn.execute_batch("COMMIT")) {
            Ok(()) => {
                self.open = false;
                // Counted when it acknowledged someone (a group whose every
                // member rolled back commits nothing).
                if !self.waiting.is_empty() {
                    self.counts.commits.fetch_add(1, Ordering::AcqRel);
                    self.counts.members.fetch_add(self.waiting.len() as u64, Ordering::AcqRel);
                }
                for member in self.waiting.drain(..) {
                    let _ = member.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, members = self.waiting.len(), "group commit failed");
                self.fail(SqlError::Unavailable(format!("commit failed: {e}")));
            }
        }
    }

    /// Rolls the whole group back and fails every waiting member with `e`.
    fn fail(&mut self, e: SqlError) {
        if self.open {
            // After a failed COMMIT SQLite may have rolled back already; a
            // second ROLLBACK then errors harmlessly.
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.open = false;
        }
        for member in self.waiting.drain(..) {
            let _ = member.send(Err(e.clone()));
        }
    }
}

/// Commits whatever group is open each time a member asks. Notifications
/// coalesce: one COMMIT answers every member released since the last.
async fn flusher(group: Weak<Mutex<Group>>, flush: Arc<Notify>) {
    loop {
        flush.notified().await;
        let Some(group) = group.upgrade() else { return };
        let mut group = group.lock().await;
        group.commit();
        // Whatever happened, nobody is left waiting on a group that ended.
        assert!(!group.open && group.waiting.is_empty(), "a group outlived its flush");
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::OpenFlags;

    use super::*;

    fn open(path: &std::path::Path, flags: OpenFlags) -> Connection {
        let conn = Connection::open_with_flags(path, flags).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        conn
    }

    fn writer(dir: &std::path::Path) -> (GroupWriter, std::path::PathBuf) {
        let path = dir.join("shard.db");
        let conn = open(&path, OpenFlags::default());
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
             CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE rows (id INTEGER PRIMARY KEY, \
               parent INTEGER REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)",
        )
        .unwrap();
        (GroupWriter::new(conn, Duration::from_secs(5)), path)
    }

    /// Waits until `n` would-be members queue for the writer.
    async fn queued(writer: &GroupWriter, n: usize) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while writer.queued() < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{} queued for the writer, not {n}", writer.queued()));
    }

    fn insert(member: &mut Member, id: i64, parent: Option<i64>) {
        member
            .conn()
            .unwrap()
            .execute("INSERT INTO rows (id, parent) VALUES (?1, ?2)", (id, parent))
            .unwrap();
    }

    /// What another connection (a reader, another process) sees: durable rows only.
    fn durable_ids(path: &std::path::Path) -> Vec<i64> {
        let conn = open(path, OpenFlags::SQLITE_OPEN_READ_ONLY);
        let mut stmt = conn.prepare("SELECT id FROM rows ORDER BY id").unwrap();
        stmt.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_members_share_commits_and_each_is_durable_when_acknowledged() {
        const MEMBERS: i64 = 64;
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path());
        let writer = Arc::new(writer);
        // The first member holds the writer until every other one queued
        // behind it, so they all run before the flusher gets the writer.
        let mut first = writer.begin().await.unwrap();
        insert(&mut first, 0, None);
        let members: Vec<_> = (1..MEMBERS)
            .map(|id| {
                let writer = writer.clone();
                let path = path.clone();
                tokio::spawn(async move {
                    let mut member = writer.begin().await.unwrap();
                    insert(&mut member, id, None);
                    member.commit().await.unwrap();
                    // Acknowledged: another connection must see it now.
                    assert!(durable_ids(&path).contains(&id), "row {id} acknowledged but not durable");
                })
            })
            .collect();
        queued(&writer, MEMBERS as usize - 1).await;
        first.commit().await.unwrap();
        for member in futures::future::join_all(members).await {
            member.unwrap();
        }
        assert_eq!(durable_ids(&path), (0..MEMBERS).collect::<Vec<_>>());
        // One fsync for all: the queue was in place before the flusher
        // asked for the writer (FIFO), so the first COMMIT took everyone.
        let (commits, members) = writer.counts().get();
        assert_eq!((commits, members), (1, MEMBERS as u64), "members share commits");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_durable_member_sees_only_durable_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path());
        let writer = Arc::new(writer);
        let mut first = writer.begin().await.unwrap();
        insert(&mut first, 1, None);
        // The relay queues for the writer while `first` runs, so it gets the
        // writer before the flusher does (FIFO): a plain member would now
        // see row 1 released but not yet committed.
        let relay = tokio::spawn({
            let writer = writer.clone();
            let path = path.clone();
            async move {
                let mut relay = writer.begin_durable().await.unwrap();
                let seen: Vec<i64> = {
                    let conn = relay.conn().unwrap();
                    let mut stmt = conn.prepare("SELECT id FROM rows").unwrap();
                    stmt.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
                };
                for id in &seen {
                    assert!(durable_ids(&path).contains(id), "the relay saw row {id} before it was durable");
                }
                relay.commit().await.unwrap();
                seen
            }
        });
        queued(&writer, 1).await;
        first.commit().await.unwrap();
        assert_eq!(relay.await.unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn a_rolled_back_member_leaves_the_rest_of_its_group_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path());
        let mut first = writer.begin().await.unwrap();
        insert(&mut first, 1, None);
        let first = tokio::spawn(first.commit());
        let mut second = writer.begin().await.unwrap();
        insert(&mut second, 2, None);
        second.rollback();
        let mut third = writer.begin().await.unwrap();
        insert(&mut third, 3, None);
        third.commit().await.unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(durable_ids(&path), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_member_dropped_mid_run_is_rolled_back_before_anyone_else_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path());
        let mut cancelled = writer.begin().await.unwrap();
        insert(&mut cancelled, 1, None);
        drop(cancelled);
        let mut next = writer.begin().await.unwrap();
        insert(&mut next, 2, None);
        next.commit().await.unwrap();
        assert_eq!(durable_ids(&path), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_the_group_commit_fails_every_member_of_the_group_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, path) = writer(dir.path());
        let writer = Arc::new(writer);
        // `good` holds the writer while `bad` queues behind it, so both are
        // released before the flusher (queued after `bad`) commits.
        let mut good = writer.begin().await.unwrap();
        insert(&mut good, 1, None);
        let bad = tokio::spawn({
            let writer = writer.clone();
            async move {
                let mut bad = writer.begin().await.unwrap();
                // A deferred foreign key: the statement passes, COMMIT fails.
                insert(&mut bad, 2, Some(404));
                bad.commit().await
            }
        });
        queued(&writer, 1).await;
        let good = good.commit().await;
        let bad = bad.await.unwrap();
        assert!(good.is_err(), "a member of a failed group must not be acknowledged: {good:?}");
        assert!(bad.is_err(), "{bad:?}");
        assert!(durable_ids(&path).is_empty());
        // The writer goes on.
        let mut after = writer.begin().await.unwrap();
        insert(&mut after, 3, None);
        after.commit().await.unwrap();
        assert_eq!(durable_ids(&path), vec![3]);
    }
}
