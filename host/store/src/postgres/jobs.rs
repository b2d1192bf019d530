//! Jobs on PostgreSQL: enqueue, the worker's turn (settle and claim in one statement), find
//! the abandoned, inspect, retry, cancel, purge, export and import.
//!
//! Like the SQLite backend, reading never fails on one odd row: counts are stored as
//! `bigint` and clamped when read, and payloads that do not parse are shown as text.

use std::sync::LazyLock;
use std::time::Duration;

use jobhost_core::flow::FlowLimit;
use jobhost_core::outcome::OutcomeKind;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row, Statement, Transaction};

use super::{ColumnValues, NOW, clamp_count};
use crate::activity::{duration_bucket, fuel_bucket};
use crate::driver::{Abandoned, ClaimRef, Now, Resolution, Settlement};
use crate::error::{ErrorKind, Result, StoreError};
use crate::model::*;

/// Jobs go to the server this many to a statement; a `seed` of millions streams through
/// one transaction in chunks of this size.
const CHUNK: usize = 1_000;

/// `a + b` in SQL, saturating at the end of time instead of failing on overflow.
macro_rules! saturating_add {
    ($a:literal, $($b:literal),+) => {
        concat!("least(", $a, "::numeric + ", $($b,)+ ", 9223372036854775807)::bigint")
    };
}

/// When a job of the row `$row`, with columns `delay` and `run_at` (one of them NULL, see
/// [`Ready`]), is ready, given `t.now`.
macro_rules! ready_at {
    ($row:literal) => {
        concat!(
            "CASE WHEN ",
            $row,
            ".run_at IS NULL THEN ",
            saturating_add!("t.now", $row, ".delay"),
            " ELSE greatest(",
            $row,
            ".run_at, t.now) END"
        )
    };
}

/// The end of a statement that inserted jobs, given the CTE `$rows` of their `(pool, status)`:
/// counts them in `job_count_deltas` and wakes the workers of each pool where it left jobs
/// pending (see `crate::wake`), once per pool, from the statement's own transaction. Its one
/// row holds how many rows `$rows` has.
///
/// A statement-level trigger did this until schema version 8, but a trigger's function is
/// compiled anew in each session, and that cost every `jobhost seed` (one session, one
/// insert) 2 ms between stamping its job and committing it.
macro_rules! count_and_wake {
    ($rows:literal) => {
        concat!(
            ", counted AS (INSERT INTO job_count_deltas SELECT pool, status, count(*) FROM ",
            $rows,
            " GROUP BY pool, status)
             SELECT (SELECT count(*) FROM ",
            $rows,
            "), (SELECT count(*) FROM (SELECT pg_notify('jobhost_ready', current_schema() || '.' || pool)
                                           FROM (SELECT DISTINCT pool FROM ",
            $rows,
            " WHERE status = 'pending') touched) woken)"
        )
    };
}

/// Inserts a chunk of jobs, counts them, wakes their pool's workers (see [`count_and_wake`])
/// and counts them in the activity table, in one statement. Each job is ready after its
/// `delay` or at its `run_at` (the other is NULL; see [`Ready`]), on the server's clock. A job
/// whose unique key is held is not inserted (see [`MATCH_HOLDERS`] for what it does then).
///
/// Jobs with unique keys are inserted in key order, each still numbered (`seq`) in the order
/// given: enqueuers whose batches share keys then wait for each other's keys in one order,
/// never in a cycle. (`nextval` in the inner query runs after its `ORDER BY`.)
pub(super) const ENQUEUE: &str = concat!(
    "WITH inserted AS (
       INSERT INTO jobs (seq, id, pool, processor, payload, status, priority, run_at, attempts, max_attempts,
                         created_at, updated_at, unique_key)
       SELECT j.seq, j.id, j.pool, j.processor, j.payload, 'pending', j.priority, ",
    ready_at!("j"),
    ", 0, j.max_attempts, t.now, t.now, j.unique_key
         FROM (SELECT ",
    now_sql!(),
    " AS now) t,
              (SELECT nextval(pg_get_serial_sequence('jobs', 'seq')) AS seq, u.*
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                             $8::bigint[], $9::bigint[], $10::text[])
                        WITH ORDINALITY AS u(id, pool, processor, payload, priority, max_attempts, delay, run_at,
                                             unique_key, n)
                ORDER BY u.n) j
        ORDER BY j.pool, j.unique_key, j.seq
       ON CONFLICT (pool, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
       RETURNING pool, processor, status, created_at),
     recorded AS (
       INSERT INTO activity
       SELECT created_at / 60000, pool, processor, 'enqueued', -1, -1, count(*), 0, 0
         FROM inserted GROUP BY created_at / 60000, pool, processor)",
    count_and_wake!("inserted")
);

/// Before [`ENQUEUE`] inserts jobs with unique keys: frees each key whose holder no longer
/// holds it (see [`Unique`]). Racing enqueuers wait for each other on the holder's row, which
/// they lock in key order as [`ENQUEUE`] inserts, and the later one finds the key already
/// NULL, so a key is freed once.
const RELEASE_KEYS: &str = concat!(
    "UPDATE jobs SET unique_key = NULL
      WHERE seq IN (
        SELECT j.seq
          FROM (SELECT ",
    now_sql!(),
    " AS now) t, unnest($2::text[], $3::text[], $4::bigint[]) AS k(pool, key, within), jobs j
         WHERE j.pool = k.pool AND j.unique_key = k.key
           AND (j.status = 'cancelled' OR (j.status IN ('completed', 'poisoned') AND j.finished_at <= t.now - k.within))
         ORDER BY j.pool, j.unique_key
           FOR UPDATE OF j)"
);

/// After [`ENQUEUE`], in its transaction: each job of the chunk that was not inserted meets
/// the job holding its key (see [`OnMatch`]). Among the jobs replacing one holder the last
/// wins, so a burst ends with its last payload. Returns, for each job the holder of whose key
/// is another job, its place in the chunk (from 1), that holder's id (NULL if the key was
/// freed since the insert found it held: the job is tried again), and whether it replaced.
const MATCH_HOLDERS: &str = concat!(
    "WITH t AS (SELECT ",
    now_sql!(),
    " AS now),
     k AS (SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::bigint[])
                    WITH ORDINALITY AS k(id, pool, unique_key, payload, on_match, delay, run_at, n)),
     holders AS (
       SELECT k.n, j.seq, j.id FROM k LEFT JOIN jobs j ON j.pool = k.pool AND j.unique_key = k.unique_key
        WHERE j.id IS DISTINCT FROM k.id),
     latest AS (
       SELECT DISTINCT ON (holders.seq) holders.seq, k.payload, k.on_match, k.delay, k.run_at
         FROM holders JOIN k ON k.n = holders.n
        WHERE holders.seq IS NOT NULL AND k.on_match <> 'skip'
        ORDER BY holders.seq, k.n DESC),
     replaced AS (
       UPDATE jobs j
          SET payload = latest.payload, updated_at = t.now,
              run_at = CASE WHEN latest.on_match = 'reschedule' THEN ",
    ready_at!("latest"),
    " ELSE j.run_at END
         FROM latest, t
        WHERE j.seq = latest.seq AND j.status = 'pending'
       RETURNING j.seq)
     SELECT holders.n, holders.id, k.on_match <> 'skip' AND holders.seq IN (SELECT seq FROM replaced)
       FROM holders JOIN k ON k.n = holders.n"
);

/// After [`import`] inserted the jobs of `$1` (their `seq`s): what [`ENQUEUE`] does for its jobs.
const COUNT_IMPORTED: &str =
    concat!("WITH imported AS (SELECT pool, status FROM jobs WHERE seq = ANY($1))", count_and_wake!("imported"));

/// How long until the earliest pending job of a pool is ready (0 or less: it is), or NULL
/// when the pool has none or is paused.
pub(super) const READY_IN: &str = concat!(
    "SELECT min(run_at) - ",
    now_sql!(),
    " FROM jobs WHERE status = 'pending' AND pool = $2
        AND NOT EXISTS (SELECT 1 FROM paused_pools WHERE paused_pools.pool = $2)"
);

/// Pauses a pool as [`crate::Store::pause_pool`] says, in one statement: under READ
/// COMMITTED, a pauser that meets another's pause of the same pool waits for it and then
/// updates the row it committed, so both answer the one pause.
pub(super) const PAUSE: &str = concat!(
    "INSERT INTO paused_pools AS p (pool, paused_at, reason)
     SELECT $2, ",
    now_sql!(),
    ", $3::text
     ON CONFLICT (pool) DO UPDATE SET reason = coalesce(EXCLUDED.reason, p.reason)
     RETURNING pool, paused_at, reason"
);

/// Ends a pool's pause and wakes its waiting workers as an enqueue does (see
/// [`count_and_wake`]): the notification is delivered when the deletion commits, so a woken
/// worker's claim sees the pool resumed.
pub(super) const RESUME: &str = "WITH resumed AS (DELETE FROM paused_pools WHERE pool = $1 RETURNING pool)
     SELECT pg_notify('jobhost_ready', current_schema() || '.' || pool) FROM resumed";

pub(super) fn paused_pool(row: &Row) -> Result<PausedPool> {
    Ok(PausedPool { pool: row.value(0)?, paused_at: row.value(1)?, reason: row.value(2)? })
}

/// Before jobs that wait for others are linked to them: locks their parents (`$1`, ids) in
/// `seq` order, flags each as having dependents, and returns each one's status. The lock
/// holds until the enqueue commits, so no parent finishes between this read and its
/// children's links: a parent finishing first is read finished, one finishing later fires
/// its trigger (schema version 12) over the committed links.
const LOCK_PARENTS: &str = "WITH locked AS (SELECT seq FROM jobs WHERE id = ANY($1) ORDER BY seq FOR NO KEY UPDATE)
     UPDATE jobs j SET has_dependents = true FROM locked WHERE j.seq = locked.seq RETURNING j.id, j.status";

/// Links jobs just inserted (`$1`, ids) to their parents (`$2`, ids, one pair per link), and
/// holds back (`run_at` = `$3`) each one with a parent not completed, counting those
/// parents. A job not inserted (its unique key was held) is passed over.
const LINK_PARENTS: &str = "WITH e AS (SELECT * FROM unnest($1::text[], $2::text[]) AS e(child, parent)),
     linked AS (
       INSERT INTO job_parents (parent_seq, child_seq)
       SELECT p.seq, c.seq FROM e JOIN jobs c ON c.id = e.child JOIN jobs p ON p.id = e.parent)
     UPDATE jobs c SET parents_left = w.left, run_at = $3
       FROM (SELECT e.child, count(*) AS left FROM e JOIN jobs p ON p.id = e.parent
              WHERE p.status <> 'completed' GROUP BY e.child) w
      WHERE c.id = w.child";

/// The statements an enqueue uses: [`ENQUEUE`], prepared on the connection, and those for
/// jobs with unique keys or parents, prepared when the first such job comes.
pub(super) struct EnqueueStatements {
    pub(super) enqueue: Statement,
    /// [`RELEASE_KEYS`] and [`MATCH_HOLDERS`].
    pub(super) keyed: Option<[Statement; 2]>,
    /// [`LOCK_PARENTS`] and [`LINK_PARENTS`].
    pub(super) linking: Option<[Statement; 2]>,
}

impl EnqueueStatements {
    async fn keyed(&mut self, client: &impl GenericClient) -> Result<&[Statement; 2]> {
        if self.keyed.is_none() {
            self.keyed = Some([client.prepare(RELEASE_KEYS).await?, client.prepare(MATCH_HOLDERS).await?]);
        }
        Ok(self.keyed.as_ref().expect("prepared above"))
    }

    async fn linking(&mut self, client: &impl GenericClient) -> Result<&[Statement; 2]> {
        if self.linking.is_none() {
            self.linking = Some([client.prepare(LOCK_PARENTS).await?, client.prepare(LINK_PARENTS).await?]);
        }
        Ok(self.linking.as_ref().expect("prepared above"))
    }
}

/// Queues every job `jobs` yields, all or none. Jobs that fit one chunk (every job the API
/// queues, one or a batch) and have no unique key go in one statement, atomic alone: one
/// round trip, where a transaction would add two (`BEGIN`, `COMMIT`). More are streamed
/// through one transaction, a chunk to a statement, and so are jobs with unique keys, whose
/// chunks take three statements (see [`insert_keyed_chunk`]).
pub(super) async fn enqueue(
    client: &mut Client,
    statements: &mut EnqueueStatements,
    jobs: &mut (dyn Iterator<Item = Result<NewJob, Refusal>> + Send),
    now: Now,
) -> Result<EnqueueReport> {
    let first = next_chunk(jobs)?;
    let keyed = |chunk: &[NewJob]| chunk.iter().any(|job| job.unique.is_some());
    let waiting = |chunk: &[NewJob]| chunk.iter().any(|job| !job.after.is_empty());
    if first.len() < CHUNK && !keyed(&first) && !waiting(&first) {
        insert_chunk(&*client, &statements.enqueue, &first, now).await?;
        return Ok(EnqueueReport { queued: first.len() as u64, matched: Vec::new() });
    }
    let tx = client.transaction().await?;
    let mut report = EnqueueReport::default();
    let mut chunk = first;
    let mut offset = 0;
    while !chunk.is_empty() {
        let matched = if keyed(&chunk) {
            insert_keyed_chunk(&tx, statements, &chunk, now).await?
        } else {
            insert_chunk(&tx, &statements.enqueue, &chunk, now).await?;
            Vec::new()
        };
        if waiting(&chunk) {
            link_parents(&tx, statements, &chunk).await?;
        }
        report.queued += (chunk.len() - matched.len()) as u64;
        report.matched.extend(matched.into_iter().map(|matched| Matched { index: offset + matched.index, ..matched }));
        offset += chunk.len() as u64;
        chunk = next_chunk(jobs)?;
    }
    tx.commit().await?;
    Ok(report)
}

/// Makes the jobs of `chunk` that were inserted wait for their parents, in the caller's
/// transaction; a parent that does not exist or will never complete refuses them all.
async fn link_parents(tx: &Transaction<'_>, statements: &mut EnqueueStatements, chunk: &[NewJob]) -> Result<()> {
    let [lock, link] = statements.linking(tx).await?.clone();
    let (children, parents): (Vec<&str>, Vec<&str>) =
        chunk.iter().flat_map(|job| job.after.iter().map(|parent| (job.id.as_str(), parent.as_str()))).unzip();
    let mut distinct = parents.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let mut statuses = std::collections::HashMap::new();
    for row in tx.query(&lock, &[&distinct]).await? {
        statuses.insert(row.value::<String>(0)?, name_at::<JobStatus>(&row, 1)?);
    }
    if let Some(why) = distinct.iter().find_map(|parent| parent_refusal(parent, statuses.get(*parent).copied())) {
        return Err(StoreError::new(ErrorKind::Refused, why));
    }
    tx.execute(&link, &[&children, &parents, &WAITING_RUN_AT]).await?;
    Ok(())
}

/// Up to [`CHUNK`] jobs; fewer only when `jobs` has no more. A refused job is the error.
fn next_chunk(jobs: &mut (dyn Iterator<Item = Result<NewJob, Refusal>> + Send)) -> Result<Vec<NewJob>> {
    jobs.take(CHUNK).map(|job| job.map_err(|Refusal(why)| StoreError::new(ErrorKind::Refused, why))).collect()
}

/// A chunk with unique keys, in the caller's transaction. Usually no key is held, and one
/// insert does it all. Otherwise, for the jobs that found their key held: frees the keys
/// whose holders let go of them, inserts those jobs again, and has each one still not
/// inserted meet the holder. Returns those jobs, by their place in the chunk. A job whose
/// holder let go of the key between the insert and the match (it finished or was
/// cancelled, and another enqueue freed the key) goes round again, so every job ends
/// queued or matched.
///
/// Every step takes its keys in one order (see [`ENQUEUE`], [`RELEASE_KEYS`]), and a holder
/// is freed only under its row lock, so enqueuers sharing keys wait for one another but
/// never in a cycle.
async fn insert_keyed_chunk(
    tx: &Transaction<'_>,
    statements: &mut EnqueueStatements,
    chunk: &[NewJob],
    now: Now,
) -> Result<Vec<Matched>> {
    if insert_chunk(tx, &statements.enqueue, chunk, now).await? == chunk.len() as u64 {
        return Ok(Vec::new());
    }
    let [release, match_holders] = statements.keyed(tx).await?.clone();
    // Jobs inserted above hold their own keys: they go through as their own holders.
    let mut pending: Vec<usize> = (0..chunk.len()).filter(|&index| chunk[index].unique.is_some()).collect();
    let mut matched = Vec::new();
    for _ in 0..3 {
        let jobs: Vec<&NewJob> = pending.iter().map(|&index| &chunk[index]).collect();
        let unique = |job: &&NewJob| job.unique.clone().expect("only jobs with keys are pending");
        let pools: Vec<&str> = jobs.iter().map(|job| job.pool.as_str()).collect();
        let keys: Vec<String> = jobs.iter().map(|job| unique(job).key).collect();
        let withins: Vec<i64> = jobs.iter().map(|job| millis(unique(job).within)).collect();
        tx.execute(&release, &[&now, &pools, &keys, &withins]).await?;
        let again: Vec<NewJob> = jobs.iter().map(|&job| job.clone()).collect();
        insert_chunk(tx, &statements.enqueue, &again, now).await?;

        let ids: Vec<&str> = jobs.iter().map(|job| job.id.as_str()).collect();
        let payloads: Vec<&str> = jobs.iter().map(|job| job.payload.as_str()).collect();
        let on_match: Vec<&str> = jobs
            .iter()
            .map(|job| match unique(job).on_match {
                OnMatch::Skip => "skip",
                OnMatch::Replace => "replace",
                OnMatch::ReplaceAndReschedule => "reschedule",
            })
            .collect();
        let (delays, run_ats) = ready_columns(jobs.iter().copied());
        let params: [&(dyn ToSql + Sync); 8] = [&now, &ids, &pools, &keys, &payloads, &on_match, &delays, &run_ats];
        let mut freed = Vec::new();
        for row in tx.query(&match_holders, &params).await? {
            let place = pending[(row.value::<i64>(0)? - 1) as usize];
            match row.value::<Option<String>>(1)? {
                Some(id) => {
                    let outcome = if row.value(2)? { EnqueueOutcome::Replaced } else { EnqueueOutcome::Duplicate };
                    matched.push(Matched { index: place as u64, id, outcome });
                }
                None => freed.push(place),
            }
        }
        if freed.is_empty() {
            matched.sort_by_key(|matched| matched.index);
            return Ok(matched);
        }
        pending = freed;
    }
    Err(StoreError::new(
        ErrorKind::Busy,
        "the unique keys of this batch were taken and freed again three times while it was queued: try again",
    ))
}

/// Each job's `delay` and `run_at` columns (see [`Ready`]): one of the two is NULL.
fn ready_columns<'a>(jobs: impl Iterator<Item = &'a NewJob>) -> (Vec<Option<i64>>, Vec<Option<i64>>) {
    jobs.map(|job| match job.ready {
        Ready::After(delay) => (Some(millis(delay)), None),
        Ready::At(at) => (None, Some(at)),
    })
    .unzip()
}

/// Inserts `chunk` with [`ENQUEUE`]; returns how many were inserted (those whose unique key
/// was held were not).
pub(super) async fn insert_chunk(
    client: &impl GenericClient,
    statement: &Statement,
    chunk: &[NewJob],
    now: Now,
) -> Result<u64> {
    if chunk.is_empty() {
        return Ok(0);
    }
    let column = |field: fn(&NewJob) -> &str| chunk.iter().map(field).collect::<Vec<&str>>();
    let number = |field: fn(&NewJob) -> i64| chunk.iter().map(field).collect::<Vec<i64>>();
    let (delays, run_ats) = ready_columns(chunk.iter());
    let unique_keys: Vec<Option<&str>> =
        chunk.iter().map(|job| job.unique.as_ref().map(|unique| unique.key.as_str())).collect();
    let inserted: i64 = client
        .query_one(
            statement,
            &[
                &now,
                &column(|job| &job.id),
                &column(|job| &job.pool),
                &column(|job| &job.processor),
                &column(|job| &job.payload),
                &number(|job| job.priority),
                &number(|job| i64::from(job.max_attempts)),
                &delays,
                &run_ats,
                &unique_keys,
            ],
        )
        .await?
        .value(0)?;
    Ok(inserted as u64)
}

/// A worker's turn as one statement: settle every finished attempt that still holds its
/// claim (`settled`, `closed`), then claim ready jobs (`picked`, `taken`, `started`). Each
/// settlement is fenced on its own claim. The settled jobs were `claimed` and the picked ones
/// `pending` in the statement's snapshot, so no row is changed twice.
///
/// A paused pool's jobs are not picked: one primary-key lookup in `paused_pools`, made once
/// per statement. Under READ COMMITTED it reads the statement's snapshot, so the guarantee
/// is: once a pause has committed (`pools pause` has returned), no turn that starts after
/// it claims a job of the pool. A turn already under way as the pause commits may still
/// take the jobs it picked; they run and are settled as the jobs already running when the
/// pool was paused are. Settling never looks at pauses, so running jobs always finish.
pub(super) const TURN: &str = concat!(
    "WITH t AS (SELECT ",
    now_sql!(),
    " AS now),
     s AS (SELECT * FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::bigint[],
                                $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bigint[],
                                $14::bigint[], $20::integer[], $21::integer[], $22::text[])
                    AS s(seq, worker_id, token, attempt, status, delay, result, last_error, outcome, message,
                         stderr, fuel_used, duration_ms, duration_bucket, fuel_bucket, processor_sha256)),
     settled AS (
       UPDATE jobs j
          SET status = s.status,
              result = CASE WHEN s.status = 'completed' THEN s.result ELSE j.result END,
              last_error = CASE WHEN s.status = 'completed' THEN NULL ELSE s.last_error END,
              run_at = CASE WHEN s.status = 'pending' THEN ",
    saturating_add!("t.now", "s.delay"),
    " ELSE j.run_at END,
              worker_id = CASE WHEN s.status = 'pending' THEN NULL ELSE j.worker_id END,
              claim_token = CASE WHEN s.status = 'pending' THEN NULL ELSE j.claim_token END,
              lease_expires_at = NULL,
              finished_at = CASE WHEN s.status = 'pending' THEN j.finished_at ELSE t.now END,
              updated_at = t.now
         FROM s, t
        WHERE j.seq = s.seq AND j.status = 'claimed' AND j.worker_id = s.worker_id AND j.claim_token = s.token
       RETURNING j.seq, j.run_at, j.pool, j.processor, j.has_dependents AND j.status = 'completed' AS readies),
     counted AS (
       INSERT INTO activity
       SELECT t.now / 60000, settled.pool, settled.processor, s.outcome, s.duration_bucket, s.fuel_bucket, count(*),
              coalesce(sum(s.duration_ms), 0), coalesce(sum(s.fuel_used), 0)
         FROM settled JOIN s ON s.seq = settled.seq, t
        GROUP BY t.now, settled.pool, settled.processor, s.outcome, s.duration_bucket, s.fuel_bucket),
     closed AS (
       UPDATE attempts a
          SET finished_at = t.now, outcome = s.outcome, message = s.message, stderr = s.stderr,
              fuel_used = s.fuel_used, duration_ms = s.duration_ms, processor_sha256 = s.processor_sha256
         FROM s, t, settled
        WHERE settled.seq = s.seq AND a.job_seq = s.seq AND a.attempt = s.attempt AND a.outcome IS NULL),
     picked AS (
       SELECT seq FROM jobs
        WHERE pool = $15 AND status = 'pending' AND run_at <= (SELECT now FROM t)
          AND EXISTS (SELECT 1 FROM workers WHERE id = $16 AND status = 'active')
          AND NOT EXISTS (SELECT 1 FROM paused_pools WHERE paused_pools.pool = $15)
        ORDER BY priority DESC, run_at, seq
        LIMIT $17
          FOR UPDATE SKIP LOCKED),
     taken AS (
       UPDATE jobs j
          SET status = 'claimed', worker_id = $16, claim_token = $18, attempts = j.attempts + 1,
              lease_expires_at = ",
    saturating_add!("t.now", "$19::bigint"),
    ", updated_at = t.now
         FROM picked, t
        WHERE j.seq = picked.seq
       RETURNING j.seq, j.id, j.pool, j.processor, j.payload, j.attempts, j.max_attempts, j.priority, j.run_at),
     started AS (
       INSERT INTO attempts (job_seq, attempt, worker_id, started_at)
       SELECT taken.seq, taken.attempts, $16, t.now FROM taken, t)
     SELECT true, seq, run_at, NULL, NULL, NULL, NULL, NULL, NULL, NULL, readies FROM settled
     UNION ALL
     SELECT false, seq, run_at, id, pool, processor, payload, attempts, max_attempts, priority, NULL FROM taken"
);

/// The flow key of job `j` when the `limits` row `l` (`processor`, `path` as a text array
/// literal) is its processor's: as [`crate::flow::key_of`] computes it; `''` without a key.
macro_rules! flow_key {
    () => {
        "CASE WHEN l.path = '{}' THEN '' ELSE coalesce(j.payload::jsonb #>> l.path::text[], '') END"
    };
}

/// A claim under flow limits: the schema's `flow_claim` function (migration 11), which locks
/// the limited processors, counts their room, and picks and takes within it, each step on a
/// fresh snapshot; see it for the shape of the rows it returns.
pub(super) const FLOW_CLAIM: &str = concat!(
    "SELECT held, seq, run_at, id, pool, processor, payload, attempts, max_attempts, priority
       FROM flow_claim(",
    now_sql!(),
    ", $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7, $8, $9, $10, $11)"
);

/// What each limit counts, per key: jobs claimed, ready (outside paused pools) and started
/// within the rate's period. Each branch reads through its own partial index.
const FLOW_COUNTS: &str = concat!(
    "WITH t AS (SELECT ",
    now_sql!(),
    " AS now),
     l AS (SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[]) AS l(processor, path, period))
     SELECT j.processor, ",
    flow_key!(),
    ", count(*), 0::bigint, 0::bigint
       FROM jobs j JOIN l ON l.processor = j.processor
      WHERE j.status = 'claimed'
      GROUP BY 1, 2
     UNION ALL
     SELECT j.processor, ",
    flow_key!(),
    ", 0, count(*), 0
       FROM jobs j JOIN l ON l.processor = j.processor, t
      WHERE j.status = 'pending' AND j.run_at <= t.now
        AND NOT EXISTS (SELECT 1 FROM paused_pools WHERE paused_pools.pool = j.pool)
      GROUP BY 1, 2
     UNION ALL
     SELECT f.processor, f.key, 0, 0, count(*)
       FROM flow_starts f JOIN l ON l.processor = f.processor, t
      WHERE l.period IS NOT NULL AND f.started_at > t.now - l.period
      GROUP BY 1, 2"
);

/// Flow limits as the parallel arrays [`FLOW_CLAIM`] and [`FLOW_COUNTS`] take: processor,
/// key path (a text array literal), max_running and rate count (NULL: no such limit), and
/// rate period in milliseconds.
struct LimitColumns<'a> {
    processors: Vec<&'a str>,
    paths: Vec<String>,
    max_running: Vec<Option<i64>>,
    rate_counts: Vec<Option<i64>>,
    periods: Vec<Option<i64>>,
}

impl<'a> LimitColumns<'a> {
    fn new(limits: &'a [FlowLimit]) -> LimitColumns<'a> {
        LimitColumns {
            processors: limits.iter().map(|limit| limit.processor.as_str()).collect(),
            paths: limits.iter().map(|limit| path_literal(&limit.key)).collect(),
            max_running: limits.iter().map(|limit| limit.max_running.map(i64::from)).collect(),
            rate_counts: limits.iter().map(|limit| limit.rate.map(|rate| i64::from(rate.count))).collect(),
            periods: limits.iter().map(|limit| limit.rate.map(|rate| millis(rate.period))).collect(),
        }
    }
}

pub(super) async fn flow_counts(client: &Client, limits: &[FlowLimit], now: Now) -> Result<Vec<FlowCount>> {
    let columns = LimitColumns::new(limits);
    let rows = client.query(FLOW_COUNTS, &[&now, &columns.processors, &columns.paths, &columns.periods]).await?;
    let count = |row: &Row, index: usize| -> Result<u64> { Ok(row.value::<i64>(index)?.max(0) as u64) };
    rows.iter()
        .map(|row| {
            Ok(FlowCount {
                processor: row.value(0)?,
                key: row.value(1)?,
                running: count(row, 2)?,
                ready: count(row, 3)?,
                started: count(row, 4)?,
            })
        })
        .collect()
}

/// A text array literal (`{"a","b"}`) of `tokens`, for a flow key's path.
fn path_literal(tokens: &[String]) -> String {
    let quoted: Vec<String> =
        tokens.iter().map(|token| format!("\"{}\"", token.replace('\\', "\\\\").replace('"', "\\\""))).collect();
    format!("{{{}}}", quoted.join(","))
}

/// A claim under flow limits with [`FLOW_CLAIM`] (see [`crate::flow`]): the jobs taken, and
/// whether a limit held a ready job back.
pub(super) async fn flow_claim(
    client: &Client,
    statement: &Statement,
    claim: &ClaimRequest<'_>,
    now: Now,
) -> Result<(Vec<ClaimedJob>, bool)> {
    let columns = LimitColumns::new(claim.flow);
    let token = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
    let rows = client
        .query(
            statement,
            &[
                &now,
                &columns.processors,
                &columns.paths,
                &columns.max_running,
                &columns.rate_counts,
                &columns.periods,
                &claim.pool,
                &claim.worker_id,
                &token,
                &millis(claim.lease),
                &(claim.limit as i32),
            ],
        )
        .await?;
    let mut held_back = false;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.value::<bool>(0)? {
            held_back = true;
            continue;
        }
        let order = (std::cmp::Reverse(row.value::<i64>(9)?), row.value::<i64>(2)?, row.value::<i64>(1)?);
        claimed.push((order, claimed_job(row, 3, order.2, claim.worker_id, token)?));
    }
    claimed.sort_by_key(|(order, _)| *order);
    Ok((claimed.into_iter().map(|(_, job)| job).collect(), held_back))
}

/// What a [`TURN`] did.
pub(super) struct TurnRows {
    pub(super) settled: Vec<Settled>,
    pub(super) claimed: Vec<ClaimedJob>,
    /// Whether it completed a job that others wait for: its trigger may have made them ready
    /// after the claim read the jobs.
    pub(super) readied: bool,
}

pub(super) async fn turn(
    client: &Client,
    statement: &Statement,
    settlements: &[Settlement<'_>],
    claim: Option<&ClaimRequest<'_>>,
    now: Now,
) -> Result<TurnRows> {
    let status_of = |resolution: &Resolution<'_>| match resolution {
        Resolution::Complete { .. } => "completed",
        Resolution::Retry { .. } => "pending",
        Resolution::Poison => "poisoned",
    };
    let seqs: Vec<i64> = settlements.iter().map(|s| s.claim.seq).collect();
    let workers: Vec<&str> = settlements.iter().map(|s| s.claim.worker_id.as_str()).collect();
    let tokens: Vec<i64> = settlements.iter().map(|s| s.claim.token).collect();
    let attempts: Vec<i64> = settlements.iter().map(|s| i64::from(s.claim.attempt)).collect();
    let statuses: Vec<&str> = settlements.iter().map(|s| status_of(&s.resolution)).collect();
    let delays: Vec<i64> = settlements
        .iter()
        .map(|s| match s.resolution {
            Resolution::Retry { delay } => millis(delay),
            _ => 0,
        })
        .collect();
    let results: Vec<Option<&str>> = settlements
        .iter()
        .map(|s| match s.resolution {
            Resolution::Complete { result } => Some(result),
            _ => None,
        })
        .collect();
    let last_errors: Vec<String> = settlements.iter().map(|s| s.report.last_error()).collect();
    let outcomes: Vec<&str> = settlements.iter().map(|s| s.report.kind.as_str()).collect();
    let messages: Vec<Option<&str>> = settlements.iter().map(|s| s.report.message).collect();
    let stderrs: Vec<Option<&str>> = settlements.iter().map(|s| s.report.stderr).collect();
    let clamp = |value: Option<u64>| value.map(|value| value.min(i64::MAX as u64) as i64);
    let fuel: Vec<Option<i64>> = settlements.iter().map(|s| clamp(s.report.fuel_used)).collect();
    let durations: Vec<Option<i64>> = settlements.iter().map(|s| clamp(s.report.duration_ms)).collect();
    let duration_buckets: Vec<i32> = settlements.iter().map(|s| duration_bucket(s.report.duration_ms)).collect();
    let fuel_buckets: Vec<i32> = settlements.iter().map(|s| fuel_bucket(s.report.fuel_used)).collect();
    let processor_hashes: Vec<Option<&str>> = settlements.iter().map(|s| s.report.processor_sha256).collect();
    let token = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
    let (pool, worker, limit, lease) = match claim {
        Some(claim) => (Some(claim.pool), Some(claim.worker_id), i64::from(claim.limit), millis(claim.lease)),
        None => (None, None, 0, 0),
    };
    let params: [&(dyn ToSql + Sync); 22] = [
        &now,
        &seqs,
        &workers,
        &tokens,
        &attempts,
        &statuses,
        &delays,
        &results,
        &last_errors,
        &outcomes,
        &messages,
        &stderrs,
        &fuel,
        &durations,
        &pool,
        &worker,
        &limit,
        &token,
        &lease,
        &duration_buckets,
        &fuel_buckets,
        &processor_hashes,
    ];
    let rows = client.query(statement, &params).await?;

    let mut settled_at = std::collections::HashMap::new();
    let mut claimed = Vec::new();
    let mut readied = false;
    for row in &rows {
        let seq: i64 = row.value(1)?;
        let run_at: i64 = row.value(2)?;
        if row.value::<bool>(0)? {
            settled_at.insert(seq, run_at);
            readied |= row.value::<bool>(10)?;
            continue;
        }
        let priority: i64 = row.value(9)?;
        claimed.push((
            (std::cmp::Reverse(priority), run_at, seq),
            claimed_job(row, 3, seq, worker.unwrap_or_default(), token)?,
        ));
    }
    // RETURNING comes in no particular order; hand the jobs out in the order they were chosen.
    claimed.sort_by_key(|(order, _)| *order);
    let settled = settlements
        .iter()
        .map(|settlement| match (settled_at.get(&settlement.claim.seq), settlement.resolution) {
            (None, _) => Settled::Stale,
            (Some(_), Resolution::Complete { .. }) => Settled::Completed,
            (Some(_), Resolution::Poison) => Settled::Poisoned,
            (Some(&run_at), Resolution::Retry { .. }) => Settled::Retrying { run_at },
        })
        .collect();
    Ok(TurnRows { settled, claimed: claimed.into_iter().map(|(_, job)| job).collect(), readied })
}

pub(super) async fn abandoned(client: &Client, pool: Option<&str>, now: Now) -> Result<Vec<Abandoned>> {
    let rows = client
        .query(
            &format!(
                "SELECT j.seq, j.worker_id, j.claim_token, j.attempts, j.max_attempts, w.status,
                        t.now - coalesce(j.lease_expires_at, t.now)
                   FROM (SELECT {NOW} AS now) t, jobs j LEFT JOIN workers w ON w.id = j.worker_id
                  WHERE j.status = 'claimed' AND ($2::text IS NULL OR j.pool = $2)
                    AND (j.lease_expires_at <= t.now OR w.status IS NULL OR w.status IN ('terminated', 'lost'))"
            ),
            &[&now, &pool],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Abandoned {
                claim: ClaimRef {
                    seq: row.value(0)?,
                    worker_id: row.value::<Option<String>>(1)?.unwrap_or_default(),
                    token: row.value::<Option<i64>>(2)?.unwrap_or_default(),
                    attempt: clamp_count(row.value(3)?),
                },
                max_attempts: clamp_count(row.value(4)?),
                worker_status: optional_name_at(row, 5)?,
                lease_overdue_ms: row.value(6)?,
            })
        })
        .collect()
}

const SUMMARY_COLUMNS: &str = "j.id, j.pool, j.processor, j.status, j.priority, j.attempts, j.max_attempts, \
     j.run_at, j.worker_id, w.host, j.lease_expires_at, j.last_error, j.created_at, j.updated_at, j.finished_at, j.seq, \
     j.unique_key, j.parents_left";

/// A state stored by its name (see [`StoredName`]); a name this jobhost does not know fails
/// the read, naming it.
pub(super) fn name_at<T: StoredName>(row: &Row, index: usize) -> Result<T> {
    let text: &str = row.value(index)?;
    T::from_stored(text).map_err(|err| StoreError::new(ErrorKind::Other, err.to_string()))
}

/// As [`name_at`], for a column that is NULL where there is no state (an attempt still running).
pub(super) fn optional_name_at<T: StoredName>(row: &Row, index: usize) -> Result<Option<T>> {
    match row.value::<Option<&str>>(index)? {
        None => Ok(None),
        Some(_) => name_at(row, index).map(Some),
    }
}

fn summary_from_row(row: &Row) -> Result<JobSummary> {
    Ok(JobSummary {
        seq: row.value(15)?,
        id: row.value(0)?,
        pool: row.value(1)?,
        processor: row.value(2)?,
        status: name_at(row, 3)?,
        priority: row.value(4)?,
        attempts: clamp_count(row.value(5)?),
        max_attempts: clamp_count(row.value(6)?),
        run_at: row.value(7)?,
        worker_id: row.value(8)?,
        host: row.value(9)?,
        lease_expires_at: row.value(10)?,
        last_error: row.value(11)?,
        created_at: row.value(12)?,
        updated_at: row.value(13)?,
        finished_at: row.value(14)?,
        unique_key: row.value(16)?,
        waiting_for: clamp_count(row.value(17)?),
    })
}

pub(super) static JOBS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {SUMMARY_COLUMNS}, j.payload, j.result
           FROM jobs j LEFT JOIN workers w ON w.id = j.worker_id WHERE j.id = ANY($1)"
    )
});

/// The columns of an attempt that [`attempt_from_row`] reads, on `attempts a` joined with
/// `workers w`.
macro_rules! attempt_columns {
    () => {
        "a.attempt, a.worker_id, a.started_at, a.finished_at, a.outcome, a.message, a.stderr, a.fuel_used,
         a.duration_ms, w.host, a.job_seq, a.processor_sha256"
    };
}

/// Each job's latest attempts ($2 of them), read backwards along its end of the primary key,
/// so the attempts before them are never read.
pub(super) const HISTORIES: &str = concat!(
    "SELECT ",
    attempt_columns!(),
    " FROM unnest($1::bigint[]) AS wanted (seq)
      CROSS JOIN LATERAL (SELECT * FROM attempts x WHERE x.job_seq = wanted.seq
                           ORDER BY x.attempt DESC LIMIT $2) a
      LEFT JOIN workers w ON w.id = a.worker_id
     ORDER BY a.job_seq, a.attempt"
);

/// One page of a job's attempts, newest first.
pub(super) const ATTEMPTS: &str = concat!(
    "SELECT ",
    attempt_columns!(),
    " FROM jobs j JOIN attempts a ON a.job_seq = j.seq LEFT JOIN workers w ON w.id = a.worker_id
     WHERE j.id = $1 AND a.attempt < $2 ORDER BY a.attempt DESC LIMIT $3"
);

/// An attempt read by `attempt_columns!`, with its job's `seq`.
fn attempt_from_row(row: &Row) -> Result<(i64, AttemptRecord)> {
    let measure = |value: Option<i64>| value.map(|value| value.max(0) as u64);
    let record = AttemptRecord {
        attempt: clamp_count(row.value(0)?),
        worker_id: row.value(1)?,
        started_at: row.value(2)?,
        finished_at: row.value(3)?,
        outcome: optional_name_at(row, 4)?,
        message: row.value(5)?,
        stderr: row.value(6)?,
        fuel_used: measure(row.value(7)?),
        duration_ms: measure(row.value(8)?),
        processor_sha256: row.value(11)?,
        host: row.value(9)?,
    };
    Ok((row.value(10)?, record))
}

/// Every parent of each job of `$1` (by `seq`; a job has at most [`MAX_PARENTS`]), and its
/// first `$2` children, each with how many it has in all.
pub(super) const LINKS: &str = "SELECT d.child_seq, true, p.id, p.status, 0::bigint
       FROM job_parents d JOIN jobs p ON p.seq = d.parent_seq
      WHERE d.child_seq = ANY($1)
     UNION ALL
     SELECT wanted.seq, false, c.id, c.status, total.n
       FROM unnest($1::bigint[]) AS wanted (seq)
      CROSS JOIN LATERAL (SELECT count(*) AS n FROM job_parents d WHERE d.parent_seq = wanted.seq) total
      CROSS JOIN LATERAL (SELECT d.child_seq FROM job_parents d WHERE d.parent_seq = wanted.seq
                           ORDER BY d.child_seq LIMIT $2) shown
       JOIN jobs c ON c.seq = shown.child_seq
     ORDER BY 1, 2, 3";

/// The jobs of `ids` that exist, with their latest attempts and their links: three
/// statements however many ids and attempts.
pub(super) async fn jobs(
    client: &Client,
    [jobs, histories, links]: &[Statement; 3],
    ids: &[&str],
) -> Result<Vec<JobDetail>> {
    let rows = client.query(jobs, &[&ids]).await?;
    let found = rows
        .iter()
        .map(|row| Ok((summary_from_row(row)?, row.value::<String>(18)?, row.value::<Option<String>>(19)?)))
        .collect::<Result<Vec<_>>>()?;
    let seqs: Vec<i64> = found.iter().map(|(job, _, _)| job.seq).collect();
    let attempts = client
        .query(histories, &[&seqs, &(i64::from(RECENT_ATTEMPTS) + 1)])
        .await?
        .iter()
        .map(attempt_from_row)
        .collect::<Result<Vec<_>>>()?;
    let links = client
        .query(links, &[&seqs, &i64::from(SHOWN_CHILDREN)])
        .await?
        .iter()
        .map(|row| {
            let link = JobLink { id: row.value(2)?, status: name_at(row, 3)? };
            Ok((row.value(0)?, row.value(1)?, link, row.value::<i64>(4)?.max(0) as u64))
        })
        .collect::<Result<Vec<LinkRow>>>()?;
    Ok(JobDetail::join(found, attempts, links))
}

pub(super) async fn parent_results(client: &Client, children: &[i64]) -> Result<Vec<ParentResult>> {
    client
        .query(
            "SELECT d.child_seq, p.id, p.result FROM job_parents d JOIN jobs p ON p.seq = d.parent_seq
              WHERE d.child_seq = ANY($1)",
            &[&children],
        )
        .await?
        .iter()
        .map(|row| Ok(ParentResult { child_seq: row.value(0)?, parent_id: row.value(1)?, result: row.value(2)? }))
        .collect()
}

/// One page of job `id`'s attempts, newest first; `None` when there is no such job.
pub(super) async fn attempts(
    client: &Client,
    statement: &Statement,
    id: &str,
    page: &AttemptPage,
) -> Result<Option<Vec<AttemptRecord>>> {
    let before = page.before.map_or(i64::MAX, |AttemptCursor(attempt)| i64::from(attempt));
    let rows = client.query(statement, &[&id, &before, &i64::from(page.limit)]).await?;
    if rows.is_empty() && client.query_opt("SELECT 1 FROM jobs WHERE id = $1", &[&id]).await?.is_none() {
        return Ok(None);
    }
    let attempts = rows.iter().map(|row| Ok(attempt_from_row(row)?.1)).collect::<Result<_>>()?;
    Ok(Some(attempts))
}

/// The conditions of a [`JobMatch`] on `jobs j`, its values in `$first`… (see [`match_params`]).
fn matching(first: usize) -> String {
    let [pool, status, processor, after, before] = std::array::from_fn(|i| first + i);
    format!(
        "(${pool}::text IS NULL OR j.pool = ${pool}) AND (${status}::text IS NULL OR j.status = ${status})
         AND (${processor}::text IS NULL OR j.processor = ${processor})
         AND (${after}::bigint IS NULL OR j.created_at >= ${after})
         AND (${before}::bigint IS NULL OR j.created_at < ${before})"
    )
}

/// The values of [`matching`], in its order.
fn match_params<'a>(matching: &'a JobMatch<'_>, status: &'a Option<&'static str>) -> [&'a (dyn ToSql + Sync); 5] {
    [&matching.pool, status, &matching.processor, &matching.created_after, &matching.created_before]
}

pub(super) static LIST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {SUMMARY_COLUMNS} FROM jobs j LEFT JOIN workers w ON w.id = j.worker_id
          WHERE {} AND ($6::bigint IS NULL OR j.seq < $6)
          ORDER BY j.seq DESC LIMIT $7",
        matching(1)
    )
});

pub(super) async fn list(client: &Client, statement: &Statement, filter: &JobFilter<'_>) -> Result<Vec<JobSummary>> {
    let status = filter.matching.status.map(JobStatus::as_str);
    let after = filter.after.map(|cursor| cursor.0);
    let limit = i64::from(filter.limit);
    let mut params = match_params(&filter.matching, &status).to_vec();
    params.extend([&after as &(dyn ToSql + Sync), &limit]);
    let rows = client.query(statement, &params).await?;
    rows.iter().map(summary_from_row).collect()
}

pub(super) async fn statuses(client: &Client, ids: &[&str]) -> Result<Vec<(String, JobStatus)>> {
    let rows = client.query("SELECT id, status FROM jobs WHERE id = ANY($1)", &[&ids]).await?;
    rows.iter().map(|row| Ok((row.value(0)?, name_at(row, 1)?))).collect()
}

pub(super) async fn claims_held_by(client: &Client, worker_id: &str) -> Result<Vec<ClaimedJob>> {
    let rows = client
        .query(
            "SELECT id, pool, processor, payload, attempts, max_attempts, seq, claim_token FROM jobs
              WHERE status = 'claimed' AND worker_id = $1
              ORDER BY seq",
            &[&worker_id],
        )
        .await?;
    rows.iter().map(|row| claimed_job(row, 0, row.value(6)?, worker_id, row.value(7)?)).collect()
}

/// A claimed job from a row holding `id, pool, processor, payload, attempts, max_attempts`
/// from column `first` on.
fn claimed_job(row: &Row, first: usize, seq: i64, worker_id: &str, token: i64) -> Result<ClaimedJob> {
    Ok(ClaimedJob {
        seq,
        id: row.value(first)?,
        pool: row.value(first + 1)?,
        processor: row.value(first + 2)?,
        payload: row.value(first + 3)?,
        attempt: clamp_count(row.value(first + 4)?),
        max_attempts: clamp_count(row.value(first + 5)?),
        worker_id: worker_id.to_owned(),
        token,
    })
}

/// As on SQLite: the fresh attempts are counted on top of the used ones, up to the ceiling
/// (`$2`), and a job with a parent that has not completed waits for it again; the time is `$1`.
fn retry_update(filter: &str) -> String {
    format!(
        "UPDATE jobs j
            SET status = 'pending', run_at = CASE WHEN j.parents_left > 0 THEN {WAITING_RUN_AT} ELSE t.now END,
                max_attempts = least(j.attempts + j.max_attempts, $2),
                worker_id = NULL, claim_token = NULL, lease_expires_at = NULL, result = NULL, finished_at = NULL,
                updated_at = t.now
           FROM (SELECT {NOW} AS now) t
          WHERE j.status IN ('poisoned', 'cancelled') AND j.attempts < $2 AND {filter}"
    )
}

pub(super) async fn retry(client: &Client, id: &str, now: Now) -> Result<IdAnswer> {
    let changed = client.execute(&retry_update("j.id = $3"), &[&now, &i64::from(ATTEMPTS_CEILING), &id]).await?;
    answer_for(client, id, changed, true).await
}

pub(super) async fn retry_matching(client: &Client, matching: &JobMatch<'_>, now: Now) -> Result<u64> {
    let status = matching.status.map(JobStatus::as_str);
    let ceiling = i64::from(ATTEMPTS_CEILING);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&now, &ceiling];
    params.extend(match_params(matching, &status));
    Ok(client.execute(&retry_update(&self::matching(3)), &params).await?)
}

const CANCEL_UPDATE: &str = concat!(
    "UPDATE jobs j SET status = 'cancelled', finished_at = t.now, updated_at = t.now
       FROM (SELECT ",
    now_sql!(),
    " AS now) t WHERE j.status = 'pending'"
);

pub(super) async fn cancel_matching(client: &Client, matching: &JobMatch<'_>, now: Now) -> Result<u64> {
    let status = matching.status.map(JobStatus::as_str);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&now];
    params.extend(match_params(matching, &status));
    Ok(client.execute(&format!("{CANCEL_UPDATE} AND {}", self::matching(2)), &params).await?)
}

pub(super) async fn cancel(client: &Client, id: &str, now: Now) -> Result<IdAnswer> {
    let changed = client.execute(&format!("{CANCEL_UPDATE} AND j.id = $2"), &[&now, &id]).await?;
    answer_for(client, id, changed, false).await
}

async fn answer_for(client: &Client, id: &str, changed: u64, retrying: bool) -> Result<IdAnswer> {
    if changed > 0 {
        return Ok(IdAnswer::Done);
    }
    let found = match client.query_opt("SELECT status, attempts FROM jobs WHERE id = $1", &[&id]).await? {
        Some(row) => Some((name_at(&row, 0)?, clamp_count(row.value(1)?))),
        None => None,
    };
    Ok(IdAnswer::explain(found, retrying))
}

/// Up to `limit` jobs, each in a finished status of `ages` and finished more than its age ago,
/// deleted with their attempts (by cascade), one statement per status. The rows are locked
/// as they are chosen, skipping any another transaction holds (a job being retried, or a
/// second server's batch), so this waits for nobody; claims lock only pending rows and the
/// counts are appended, so nobody waits for it but on the rows it deletes. The first
/// condition repeats the `jobs_finished` index's own, so the planner knows it may use it.
pub(super) async fn delete_finished(
    client: &Client,
    ages: &[(JobStatus, Duration)],
    limit: u32,
    now: Now,
) -> Result<u64> {
    let delete = client
        .prepare(&format!(
            "DELETE FROM jobs WHERE seq IN (
                 SELECT j.seq FROM jobs j, (SELECT {NOW} AS now) t
                  WHERE j.status IN ('completed', 'poisoned', 'cancelled') AND j.status = $2
                    AND j.finished_at < t.now - least($3::bigint, t.now)
                  LIMIT $4 FOR UPDATE OF j SKIP LOCKED)"
        ))
        .await?;
    let mut deleted = 0;
    for &(status, age) in ages.iter().filter(|(status, _)| status.is_finished()) {
        let left = u64::from(limit) - deleted;
        if left == 0 {
            break;
        }
        deleted += client.execute(&delete, &[&now, &status.as_str(), &millis(age), &(left as i64)]).await?;
    }
    Ok(deleted)
}

pub(super) async fn export(client: &Client, after: i64, limit: u32) -> Result<Vec<ExportedJob>> {
    let rows = client
        .query(
            "SELECT seq, id, pool, processor, payload, status, priority, run_at, attempts, max_attempts, worker_id,
                    claim_token, lease_expires_at, result, last_error, created_at, updated_at, finished_at,
                    unique_key, parents_left
               FROM jobs WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &i64::from(limit)],
        )
        .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in &rows {
        jobs.push(ExportedJob {
            seq: row.value(0)?,
            id: row.value(1)?,
            pool: row.value(2)?,
            processor: row.value(3)?,
            payload: row.value(4)?,
            status: name_at(row, 5)?,
            priority: row.value(6)?,
            run_at: row.value(7)?,
            attempts: clamp_count(row.value(8)?),
            max_attempts: clamp_count(row.value(9)?),
            worker_id: row.value(10)?,
            claim_token: row.value(11)?,
            lease_expires_at: row.value(12)?,
            result: row.value(13)?,
            last_error: row.value(14)?,
            created_at: row.value(15)?,
            updated_at: row.value(16)?,
            finished_at: row.value(17)?,
            unique_key: row.value(18)?,
            waiting_for: clamp_count(row.value(19)?),
            parents: Vec::new(),
            history: Vec::new(),
        });
    }
    let seqs: Vec<i64> = jobs.iter().map(|job| job.seq).collect();
    let history = client
        .query(
            "SELECT job_seq, attempt, worker_id, started_at, finished_at, outcome, message, stderr, fuel_used,
                    duration_ms, processor_sha256
               FROM attempts WHERE job_seq = ANY($1) ORDER BY job_seq, attempt",
            &[&seqs],
        )
        .await?;
    let mut by_seq: std::collections::HashMap<i64, Vec<ExportedAttempt>> = std::collections::HashMap::new();
    for row in &history {
        by_seq.entry(row.value(0)?).or_default().push(ExportedAttempt {
            attempt: clamp_count(row.value(1)?),
            worker_id: row.value(2)?,
            started_at: row.value(3)?,
            finished_at: row.value(4)?,
            outcome: optional_name_at(row, 5)?,
            message: row.value(6)?,
            stderr: row.value(7)?,
            fuel_used: row.value(8)?,
            duration_ms: row.value(9)?,
            processor_sha256: row.value(10)?,
        });
    }
    let parents = client
        .query(
            "SELECT d.child_seq, p.id FROM job_parents d JOIN jobs p ON p.seq = d.parent_seq
              WHERE d.child_seq = ANY($1) ORDER BY d.child_seq, d.parent_seq",
            &[&seqs],
        )
        .await?;
    let mut parents_of: std::collections::HashMap<i64, Vec<String>> = std::collections::HashMap::new();
    for row in &parents {
        parents_of.entry(row.value(0)?).or_default().push(row.value(1)?);
    }
    for job in &mut jobs {
        job.history = by_seq.remove(&job.seq).unwrap_or_default();
        job.parents = parents_of.remove(&job.seq).unwrap_or_default();
    }
    Ok(jobs)
}

pub(super) async fn import(tx: &Transaction<'_>, jobs: &[ExportedJob]) -> Result<()> {
    let insert_job = tx
        .prepare(
            "INSERT INTO jobs (id, pool, processor, payload, status, priority, run_at, attempts, max_attempts,
                               worker_id, claim_token, lease_expires_at, result, last_error, created_at, updated_at,
                               finished_at, unique_key, parents_left)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
             RETURNING seq",
        )
        .await?;
    let insert_attempt = tx
        .prepare(
            "INSERT INTO attempts (job_seq, attempt, worker_id, started_at, finished_at, outcome, message, stderr,
                                   fuel_used, duration_ms, processor_sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .await?;
    let mut seqs = Vec::with_capacity(jobs.len());
    for job in jobs {
        let seq: i64 = tx
            .query_one(
                &insert_job,
                &[
                    &job.id,
                    &job.pool,
                    &job.processor,
                    &job.payload,
                    &job.status.as_str(),
                    &job.priority,
                    &job.run_at,
                    &i64::from(job.attempts),
                    &i64::from(job.max_attempts),
                    &job.worker_id,
                    &job.claim_token,
                    &job.lease_expires_at,
                    &job.result,
                    &job.last_error,
                    &job.created_at,
                    &job.updated_at,
                    &job.finished_at,
                    &job.unique_key,
                    &i64::from(job.waiting_for),
                ],
            )
            .await?
            .value(0)?;
        seqs.push(seq);
        if !job.parents.is_empty() {
            // Parents come first in `seq` order, so each is here already, unless it was not kept.
            tx.execute(
                "WITH parent AS (UPDATE jobs SET has_dependents = true WHERE id = ANY($1) RETURNING seq)
                 INSERT INTO job_parents (parent_seq, child_seq) SELECT seq, $2 FROM parent",
                &[&job.parents, &seq],
            )
            .await?;
        }
        for attempt in &job.history {
            tx.execute(
                &insert_attempt,
                &[
                    &seq,
                    &i64::from(attempt.attempt),
                    &attempt.worker_id,
                    &attempt.started_at,
                    &attempt.finished_at,
                    &attempt.outcome.map(OutcomeKind::as_str),
                    &attempt.message,
                    &attempt.stderr,
                    &attempt.fuel_used,
                    &attempt.duration_ms,
                    &attempt.processor_sha256,
                ],
            )
            .await?;
        }
    }
    tx.execute(COUNT_IMPORTED, &[&seqs]).await?;
    Ok(())
}
