r"""Sweeps of training runs on Dask distributed: one results table, resumable, failure-tolerant.

A sweep is a list of :class:`Run` (a unique ``key``, the grid coordinates ``params``, and a top-level function
``fn(**kwargs)`` that trains one configuration and returns a flat dict of measurements).  :func:`run_sweep` sends
the runs that are not finished yet to a Dask cluster and stores each result the moment it arrives.

* **Cluster.** ``scheduler`` (``--scheduler ADDRESS``, or the environment variable ``MFTRNN_SCHEDULER``): an existing
  Dask scheduler, e.g. ``tcp://10.0.0.1:8786`` (``dask scheduler`` on one machine, ``dask worker ADDRESS
  --nthreads 1`` on each node); the same sweep runs there unchanged.  Without it, a
  :class:`distributed.LocalCluster` of ``workers`` processes (default: the number of cores) with one thread each.
  Every run sets ``torch.set_num_threads(threads)`` (default 1) on its worker.  Run files (per-run JSON and
  checkpoints) are written by the workers: on a multi-node cluster the output folder must be on a shared file
  system.
* **Results table.** :class:`ResultsTable`, an SQLite database (``--out FILE.sqlite``): one row per run with its
  key, status (``finished``, or ``failed`` with the error), the grid coordinates and the measurements as JSON, and
  the time it was stored.  The client alone writes it, each row in its own transaction, so a killed sweep leaves
  every finished row intact and no partial one.  A sweep holds a lock on the table
  (:class:`mftrnn.experiments.harness.RunLock`): a second sweep on the same table is refused.
* **Resumption.** Running the same sweep again skips finished rows, runs the failed and missing ones again, and
  each run resumes from its own checkpoint (the run function's job: :func:`mftrnn.experiments.seqdigits.train`
  verifies and resumes its checkpoints).
* **Failures.** A run that raises (or whose worker dies twice) is stored as ``failed`` with its one-line error, and
  the sweep goes on; :func:`run_sweep` returns a :class:`SweepReport` with the counts.
* **Progress.** A ``tqdm`` bar over the runs of this call, with the numbers done, running and failed.

Why Dask distributed: it gives the local cluster, the remote scheduler, worker fault handling and
``as_completed`` out of the box; nothing here is a process pool or a job queue of its own.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DomainError, MftrnnError
from .harness import RunLock, jsonable, one_line, utc_now

__all__ = ["Run", "ResultsTable", "SweepReport", "run_sweep", "SCHEDULER_ENV", "TABLE_FORMAT"]

SCHEDULER_ENV = "MFTRNN_SCHEDULER"
"""Environment variable naming a Dask scheduler address (used when ``scheduler`` is not given)."""

TABLE_FORMAT = "mftrnn.sweep/1"


@dataclass(frozen=True)
class Run:
    """One training run of a sweep: ``key`` (unique in the table; letters, digits, ``.-_=``), ``fn`` (a picklable
    top-level function), ``kwargs`` (its keyword arguments) and ``params`` (the grid coordinates stored with the
    result)."""

    key: str
    fn: Callable
    kwargs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)


_SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('finished', 'failed')),
    params TEXT NOT NULL,
    result TEXT,
    error TEXT,
    stored_utc TEXT NOT NULL)"""


class ResultsTable:
    """The SQLite results table of a sweep (module docstring).  ``ResultsTable(path)`` opens or creates it;
    :meth:`record` stores one row atomically; :meth:`finished_keys` and :meth:`rows` read it."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.suffix not in (".sqlite", ".db"):
            raise DomainError(f"results table {str(self.path)!r} must end in .sqlite or .db (--out)")
        if not self.path.parent.is_dir():
            raise DomainError(f"the folder of the results table {str(self.path)!r} does not exist (--out)")
        try:
            self._db = sqlite3.connect(self.path, timeout=30.0)
            with self._db:
                self._db.execute(_SCHEMA)
                self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
                row = self._db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
                if row is None:
                    self._db.execute("INSERT INTO meta VALUES ('format', ?)", (TABLE_FORMAT,))
                elif row[0] != TABLE_FORMAT:
                    raise MftrnnError(f"{self.path}: a table of format {row[0]!r}, not {TABLE_FORMAT!r}")
        except sqlite3.DatabaseError as exc:
            raise MftrnnError(f"{self.path} is not a readable results table ({exc}); choose another --out") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def record(self, key: str, status: str, params: dict, result: dict | None = None,
               error: str | None = None) -> None:
        """Store (or replace) the row of ``key`` in one transaction."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?)",
                             (key, status, json.dumps(jsonable(params), allow_nan=False, sort_keys=True),
                              None if result is None else json.dumps(jsonable(result), allow_nan=False),
                              error, utc_now()))

    def finished_keys(self) -> set[str]:
        return {k for (k,) in self._db.execute("SELECT key FROM runs WHERE status = 'finished'")}

    def rows(self, status: str | None = None) -> list[dict]:
        """Every row as ``{**params, **result, "key", "status", "error", "stored_utc"}`` (``status`` filters; a
        ``status`` of the result itself is renamed ``run_status``)."""
        q = "SELECT key, status, params, result, error, stored_utc FROM runs"
        args = ()
        if status is not None:
            q, args = q + " WHERE status = ?", (status,)
        out = []
        for key, st, params, result, error, stored in self._db.execute(q + " ORDER BY key", args):
            res = json.loads(result) if result else {}
            if "status" in res:  # a run's own status (e.g. diverged) must not shadow the table's
                res["run_status"] = res.pop("status")
            out.append({**json.loads(params), **res, "key": key, "status": st, "error": error,
                        "stored_utc": stored})
        return out


@dataclass
class SweepReport:
    """What one call of :func:`run_sweep` did: ``total`` runs in the sweep, ``skipped`` (finished before),
    ``finished`` and ``failed`` in this call, ``errors`` (key -> one-line error), ``workers`` and ``wall_s``."""

    total: int
    skipped: int = 0
    finished: int = 0
    failed: int = 0
    errors: dict = field(default_factory=dict)
    workers: int = 0
    wall_s: float = 0.0


def _call(fn, kwargs: dict, threads: int) -> dict:
    """What a worker runs: ``fn(**kwargs)`` with ``threads`` torch threads; the result must be a dict."""
    import torch
    torch.set_num_threads(threads)
    out = fn(**kwargs)
    if not isinstance(out, dict):
        raise MftrnnError(f"the run function {getattr(fn, '__name__', fn)!r} returned {type(out).__name__}, "
                          "not a dict")
    return out


def _client(scheduler: str | None, workers: int | None):
    """A ``distributed.Client`` on ``scheduler`` (or :data:`SCHEDULER_ENV`), else on a new local cluster."""
    from distributed import Client, LocalCluster
    address = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if address:
        try:
            return Client(address, timeout="20s"), None
        except (OSError, TimeoutError) as exc:
            raise MftrnnError(f"cannot reach the Dask scheduler at {address!r} ({one_line(exc)}); check "
                              f"--scheduler / ${SCHEDULER_ENV}") from None
    n = workers if workers is not None else (os.cpu_count() or 1)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.CRITICAL)
    return Client(cluster), cluster


def _check_runs(runs) -> list[Run]:
    runs = list(runs)
    seen = set()
    for r in runs:
        if not isinstance(r, Run):
            raise DomainError(f"a sweep is a list of Run, got {type(r).__name__}")
        if not r.key or not all(c.isalnum() or c in ".-_=" for c in r.key):
            raise DomainError(f"run key {r.key!r} must be non-empty letters, digits and .-_=")
        if r.key in seen:
            raise DomainError(f"run key {r.key!r} appears twice in the sweep")
        seen.add(r.key)
    return runs


def run_sweep(runs: Iterable[Run], table, *, scheduler: str | None = None, workers: int | None = None,
              threads: int = 1, progress: bool = True, log: Callable[[str], None] | None = None,
              command: str | None = None) -> SweepReport:
    """Run every unfinished run of ``runs`` on Dask and store each result in the table ``table`` as it arrives
    (module docstring).  ``workers``: local cluster size (ignored with a scheduler); ``threads``: torch threads per
    run; ``progress``: a tqdm bar on stderr; ``log``: receives one line per failed run."""
    import time
    runs = _check_runs(runs)
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 1):
        raise DomainError(f"workers must be an integer >= 1, got {workers!r} (--workers)")
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise DomainError(f"threads must be an integer >= 1, got {threads!r} (--threads)")
    table_path = Path(table)
    t0 = time.perf_counter()
    with RunLock([table_path], output=table_path, command=command), ResultsTable(table_path) as tab:
        done = tab.finished_keys()
        todo = [r for r in runs if r.key not in done]
        report = SweepReport(total=len(runs), skipped=len(runs) - len(todo))
        if not todo:
            report.wall_s = time.perf_counter() - t0
            return report
        client, cluster = _client(scheduler, workers)
        try:
            from distributed import as_completed
            report.workers = len(client.scheduler_info(n_workers=-1)["workers"])
            by_future = {}
            for r in todo:
                f = client.submit(_call, r.fn, r.kwargs, int(threads), key=f"mftrnn-run-{r.key}", pure=False)
                by_future[f] = r
            bar = _bar(progress, len(runs), report.skipped)
            try:
                for f in as_completed(list(by_future)):
                    r = by_future.pop(f)
                    if f.status == "finished":
                        tab.record(r.key, "finished", r.params, f.result())
                        report.finished += 1
                    else:
                        msg = _error_text(f)
                        tab.record(r.key, "failed", r.params, None, msg)
                        report.failed += 1
                        report.errors[r.key] = msg
                        if log:
                            log(f"mftrnn: run {r.key} failed: {msg}")
                    f.release()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(running=min(len(by_future), report.workers), failed=report.failed,
                                        refresh=False)
            finally:
                if bar is not None:
                    bar.close()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    report.wall_s = time.perf_counter() - t0
    return report


def _error_text(future) -> str:
    """``Type: one-line message`` of a failed future (a cancelled one, e.g. its worker died, says so)."""
    try:
        exc = future.exception()
    except Exception as exc2:  # noqa: BLE001 - a cancelled future has no exception to fetch
        return f"{type(exc2).__name__}: {one_line(exc2)}"
    if isinstance(exc, BaseException):
        return f"{type(exc).__name__}: {one_line(exc)}"
    return f"failed ({future.status})"


def _bar(progress: bool, total: int, initial: int):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="run", desc="sweep", file=sys.stderr, dynamic_ncols=True)
