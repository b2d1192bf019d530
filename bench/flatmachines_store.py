"""The original example's store on the store benchmark's work (run by jobhost-bench, section 3).

    python flatmachines_store.py --db PATH --items N --procs P

Uses flatmachines 4.2.1's SQLiteWorkBackend exactly as shipped: its own `push`, `claim` and
`complete`, its own schema and connection handling, SQLite's default settings. Pushes N items
(not timed), then starts P processes that each build their own backend on the file, wait on a
barrier, and loop `claim` then `complete` (two calls, as the library is used) until `claim`
returns None. The time runs from the barrier to the last process's exit.

Prints one JSON line: items, procs, seconds, claims (successful claim calls), unique (distinct
items claimed), handed_twice (claims - unique), lost_completions (a `complete` that found its
item already completed by another process), lock_errors ("database is locked" after SQLite's
5 s busy timeout; the call is retried) and left (items still in the table at the end).
"""

import argparse
import asyncio
import json
import multiprocessing
import os
import sqlite3
import time

from flatmachines.work import SQLiteWorkBackend

POOL = "bench"
RESULT = {"status": "completed", "processed": True}
# A process that has not reported after this long is stuck, not slow.
REPORT_TIMEOUT_SECONDS = 1800


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--procs", type=int, required=True)
    args = parser.parse_args()

    pool = SQLiteWorkBackend(db_path=args.db).pool(POOL)
    asyncio.run(push_all(pool, args.items))

    # fork: the children inherit the imported library; no connection is open at this point
    # (the library opens one per call).
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(args.procs + 1)
    results = context.Queue()
    processes = [context.Process(target=drain, args=(args.db, barrier, results)) for _ in range(args.procs)]
    for process in processes:
        process.start()
    barrier.wait()
    started = time.perf_counter()
    reports = [results.get(timeout=REPORT_TIMEOUT_SECONDS) for _ in processes]
    for process in processes:
        process.join()
    seconds = time.perf_counter() - started
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    if failed:
        raise SystemExit(f"flatmachines_store.py: {len(failed)} worker process(es) failed (exit codes {failed})")

    claimed = [item for report in reports for item in report["claimed"]]
    with sqlite3.connect(args.db) as conn:
        left = conn.execute("SELECT count(*) FROM work_pool").fetchone()[0]
    print(json.dumps({
        "items": args.items,
        "procs": args.procs,
        "seconds": seconds,
        "claims": len(claimed),
        "unique": len(set(claimed)),
        "handed_twice": len(claimed) - len(set(claimed)),
        "lost_completions": sum(report["lost"] for report in reports),
        "lock_errors": sum(report["errors"] for report in reports),
        "left": left,
    }))


async def push_all(pool, items):
    for seq in range(items):
        await pool.push({"seq": seq})


def drain(db, barrier, results):
    """One worker process: its own backend (as a separate worker program would have)."""
    pool = SQLiteWorkBackend(db_path=db).pool(POOL)
    worker_id = f"bench-{os.getpid()}"
    loop = asyncio.new_event_loop()
    barrier.wait()
    results.put(loop.run_until_complete(claim_and_complete(pool, worker_id)))


async def claim_and_complete(pool, worker_id):
    claimed, lost, errors = [], 0, 0
    while True:
        try:
            item = await pool.claim(worker_id)
        except sqlite3.OperationalError:
            errors += 1
            continue
        if item is None:
            break
        claimed.append(item.id)
        while True:
            try:
                await pool.complete(item.id, RESULT)
                break
            except KeyError:
                lost += 1
                break
            except sqlite3.OperationalError:
                errors += 1
    return {"claimed": claimed, "lost": lost, "errors": errors}


if __name__ == "__main__":
    main()
