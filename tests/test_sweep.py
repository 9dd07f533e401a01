"""The Dask sweep engine and the trainability experiment (mftrnn.experiments.sweep, .trainability, mftrnn sweep).

Real ``LocalCluster``s of two worker processes run real (tiny) training runs: a sweep stores every run, a re-run
skips finished ones, a killed sweep resumes (finished rows untouched, an interrupted run continued from its
checkpoint), and a failing run is recorded while the others finish.
"""
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mftrnn import DomainError, MftrnnError
from mftrnn.experiments import trainability as tr
from mftrnn.experiments.harness import RunLock
from mftrnn.experiments.seqdigits import load_results
from mftrnn.experiments.sweep import ResultsTable, Run, run_sweep

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parent.parent


def _tiny(table, diagrams=("vanilla-orthogonal",), **kw):
    return tr.grid_runs("tiny", table, diagrams=diagrams, **kw)


def test_sweep_runs_stores_and_skips(tmp_path):
    table = tmp_path / "t.sqlite"
    runs = _tiny(table, diagrams=("vanilla-orthogonal", "minimal-mu_b"))
    assert len(runs) == 2 * 2 * 2  # diagrams x values x lengths (one seed)
    rep = run_sweep(runs, table, workers=2, progress=False)
    assert (rep.total, rep.finished, rep.failed, rep.workers) == (8, 8, 0, 2)
    with ResultsTable(table) as tab:
        rows = tab.rows()
    assert len(rows) == 8 and all(r["status"] == "finished" for r in rows)
    assert all(r["run_status"] in ("finished", "diverged") for r in rows)
    for r in rows:
        res = load_results([tr.runs_folder(table) / r["result_file"]])[0]
        # the table's numbers are the run file's numbers
        assert r["best_accuracy"] == max(p["test_accuracy"] for p in res["curve"])
        assert r["chi_blank"] == res["theory"]["blank"]["chi"]
        assert r["T"] == res["config"]["T_pad"] + 8 and r["value"] == res["config"][r["axis"]]
        assert r["commit"] == res["provenance"]["commit"] and r["threads"] == 1
        if r["chi_blank"] != 1:
            assert math.isclose(r["xi"], 1 / abs(math.log(r["chi_blank"])))
    stored = {r["key"]: r["stored_utc"] for r in rows}
    rep2 = run_sweep(runs, table, workers=2, progress=False)
    assert (rep2.skipped, rep2.finished, rep2.workers) == (8, 0, 0)  # nothing submitted, no cluster started
    with ResultsTable(table) as tab:
        assert {r["key"]: r["stored_utc"] for r in tab.rows()} == stored


def test_failing_run_is_recorded_and_the_rest_finish(tmp_path):
    table = tmp_path / "t.sqlite"
    runs = _tiny(table)
    bad = runs[0]
    bad_cfg = dict(bad.kwargs["config"], hidden=0)  # invalid: DigitsConfig.validated raises DomainError
    runs[0] = Run(bad.key, bad.fn, dict(bad.kwargs, config=bad_cfg), bad.params)
    lines = []
    rep = run_sweep(runs, table, workers=2, progress=False, log=lines.append)
    assert (rep.finished, rep.failed) == (len(runs) - 1, 1)
    assert "hidden" in rep.errors[bad.key] and "DomainError" in rep.errors[bad.key]
    assert any(bad.key in line for line in lines)
    with ResultsTable(table) as tab:
        failed = tab.rows(status="failed")
        assert [r["key"] for r in failed] == [bad.key] and "hidden" in failed[0]["error"]
        assert len(tab.rows(status="finished")) == len(runs) - 1
    # a re-run retries the failed run only
    runs[0] = bad
    rep2 = run_sweep(runs, table, workers=1, progress=False)
    assert (rep2.skipped, rep2.finished, rep2.failed) == (len(runs) - 1, 1, 0)


def test_killed_sweep_resumes(tmp_path):
    """Kill a sweep (the whole process group, as a user's Ctrl-C or a lost node would) once one run is finished
    and another has a checkpoint; the same command then finishes the grid, keeping the finished rows and
    continuing the interrupted run from its checkpoint."""
    table = tmp_path / "t.sqlite"
    cmd = [sys.executable, "-m", "mftrnn", "sweep", "--preset", "tiny", "--out", str(table), "--workers", "1",
           "--diagrams", "vanilla-orthogonal", "--steps", "400", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    folder = tr.runs_folder(table)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            done = 0
            if table.exists():
                with ResultsTable(table) as tab:
                    done = len(tab.finished_keys())
            ckpts = list(folder.glob(".*.ckpt.pt")) if folder.exists() else []
            if done >= 1 and ckpts:
                break
            if proc.poll() is not None:
                pytest.fail(f"the sweep ended before it could be killed: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no finished run and checkpoint within 240 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with ResultsTable(table) as tab:
        before = {r["key"]: r["stored_utc"] for r in tab.rows()}
    interrupted = {p.name[1:-len(".ckpt.pt")] for p in folder.glob(".*.ckpt.pt")}
    assert before and interrupted
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{len(before)} already done" in out.stdout
    with ResultsTable(table) as tab:
        rows = {r["key"]: r for r in tab.rows()}
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows.values())
    assert all(rows[k]["stored_utc"] == v for k, v in before.items())  # finished rows untouched
    resumed = [load_results([folder / f"{k}.json"])[0] for k in interrupted if k in rows]
    assert resumed and all(r["provenance"]["sessions"] == 2 for r in resumed)


def test_table_lock_and_bad_input(tmp_path):
    table = tmp_path / "t.sqlite"
    runs = _tiny(table)
    held, release = threading.Event(), threading.Event()

    def hold():  # another sweep on the same table (the lock is per thread and per process)
        with RunLock([table]):
            held.set()
            release.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(MftrnnError, match="in use"):
            run_sweep(runs, table, workers=1, progress=False)
    finally:
        release.set()
        t.join()
    with pytest.raises(DomainError, match="twice"):
        run_sweep(runs + runs[:1], table, workers=1, progress=False)
    with pytest.raises(DomainError, match="workers"):
        run_sweep(runs, table, workers=0, progress=False)
    with pytest.raises(DomainError, match=".sqlite"):
        ResultsTable(tmp_path / "t.csv")
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(MftrnnError, match="not a readable results table"):
        ResultsTable(tmp_path / "junk.sqlite").rows()
    with pytest.raises(DomainError, match="unknown preset"):
        tr.grid_runs("huge", table)
    with pytest.raises(DomainError, match="unknown diagram"):
        tr.grid_runs("tiny", table, diagrams=("lstm-forget",))


def _rows(rule, xi=(2.0, 5.0, 20.0, 100.0), T=(10, 30, 100, 300)):
    return [dict(diagram="vanilla-orthogonal", status="finished", value=x, T=t, xi=x, chi_blank=math.exp(-1 / x),
                 best_accuracy=0.9 if rule(t, x) else 0.1) for x in xi for t in T]


def test_separation_recovers_the_rule():
    """Synthetic runs trained exactly when T <= 4 xi: the best k lies in the interval of factors that classify
    every run correctly (between the largest T/xi of a trained run and the smallest of an untrained one)."""
    rows = _rows(lambda t, x: t <= 4 * x)
    s = tr.separation(rows, "vanilla-orthogonal")
    ratios_trained = [r["T"] / r["xi"] for r in rows if r["best_accuracy"] > 0.5]
    ratios_not = [r["T"] / r["xi"] for r in rows if r["best_accuracy"] < 0.5]
    assert s["fraction"] == 1.0 and max(ratios_trained) <= s["k"] < min(ratios_not)
    assert s["n"] == 16 and s["n_trained"] == len(ratios_trained)
    # nothing trains: the smallest k of the grid is best; it still predicts T = 10 <= 0.1 xi = 10 trained
    s0 = tr.separation(_rows(lambda t, x: False), "vanilla-orthogonal")
    assert s0["k"] == 0.1 and s0["fraction"] == 15 / 16 and s0["n_trained"] == 0
    with pytest.raises(DomainError, match="no finished runs"):
        tr.separation(rows, "minimal-mu_b")
    # chi = 1 (stored xi null) is an infinite timescale: always predicted trainable; no chi: left out
    edge = _rows(lambda t, x: True, xi=(5.0,)) + [dict(rows[0], chi_blank=1.0, xi=None, T=10 ** 6, best_accuracy=0.9),
                                                 dict(rows[0], chi_blank=None, xi=None, best_accuracy=0.1)]
    s1 = tr.separation(edge, "vanilla-orthogonal")
    assert s1["n"] == 5 and s1["fraction"] == 1.0


def test_theory_xi_is_the_blank_phase_timescale():
    """Vanilla RNN at zero input and bias: q* = 0 below sigma_w = 1, where chi = sigma_w^2 exactly."""
    xi = tr.theory_xi("vanilla-orthogonal", [0.5, 0.9, 1.0])
    assert xi[0] == pytest.approx(1 / abs(math.log(0.25)), rel=1e-12)
    assert xi[1] == pytest.approx(1 / abs(math.log(0.81)), rel=1e-12)
    assert xi[2] == math.inf
    # the minimalRNN's gate at zero input: chi = sigmoid(mu_b)^2, independent of sigma_w
    s = 1 / (1 + math.exp(-4.0))
    assert tr.theory_xi("minimal-sigma_w", [0.5, 3.0]) == pytest.approx([1 / abs(math.log(s * s))] * 2, rel=1e-9)


def test_table_rows_keep_the_table_status(tmp_path):
    """A run's own status (a training run that diverged is a finished point of the grid) never shadows the
    table's; rows are stored and read back exactly, one transaction each."""
    with ResultsTable(tmp_path / "t.sqlite") as tab:
        tab.record("a", "finished", {"T": 10}, {"status": "diverged", "best_accuracy": 0.1})
        tab.record("b", "failed", {"T": 20}, None, "ValueError: boom")
        tab.record("a", "finished", {"T": 10}, {"status": "finished", "best_accuracy": 0.9})  # replaced
        rows = {r["key"]: r for r in tab.rows()}
    assert rows["a"]["status"] == "finished" and rows["a"]["run_status"] == "finished"
    assert rows["a"]["best_accuracy"] == 0.9 and rows["a"]["T"] == 10
    assert rows["b"]["status"] == "failed" and rows["b"]["error"] == "ValueError: boom"
    with ResultsTable(tmp_path / "t.sqlite") as tab:
        tab.record("c", "finished", {"T": 30}, {"status": "diverged"})
        assert tab.rows(status="finished")[1]["run_status"] == "diverged"
        assert tab.finished_keys() == {"a", "c"}
