"""Table-driven fuzz of the command line: every subcommand of ``mftrnn`` against bad input.

Each case must end in a documented exit status (``mftrnn.cli.app``: 1 for an input error, reported as exactly one
line ``mftrnn: error: ...`` on stderr; 2 for an argparse usage error, whose last stderr line is argparse's
``mftrnn ...: error: ...``), never a traceback or an internal error (status 3), and within a few seconds. Cases run
in-process (``tests/_cli.py``). ``digits`` and ``lm`` are fuzzed only for their argument validation: their training
and data loading are replaced by a sentinel that fails the test if reached.

Placeholders in the argument lists: ``{tmp}`` a fresh temporary folder, ``{file}`` a regular file in it (so
``{file}/x.npz`` lies under a non-directory), ``{ro}`` a read-only folder (cases using it are skipped as root, who
may write anyway).
"""
from __future__ import annotations

import os
import time

import pytest

from _cli import assert_one_line_error, run_cli
from mftrnn.cli.app import main

HUGE = "1e308"
BIG_INT = "9" * 400

BAD = {
    "fixed-point": [
        ["fixed-point", "elman"],
        ["fixed-point", ""],
        ["fixed-point", "vanilla", "--sigma-w", "-1"],
        ["fixed-point", "vanilla", "--sigma-w", "nan"],
        ["fixed-point", "vanilla", "--sigma-w", "inf"],
        ["fixed-point", "vanilla", "--sigma-v", "-inf"],
        ["fixed-point", "vanilla", "--sigma-b", "-0.5"],
        ["fixed-point", "vanilla", "--R", "-1"],
        ["fixed-point", "vanilla", "--mu-b", "nan"],
        ["fixed-point", "vanilla", "--sigma-w", HUGE],
        ["fixed-point", "minimal", "--sigma-b", HUGE],
        ["fixed-point", "minimal", "--R", HUGE],
        ["fixed-point", "vanilla", "--mu-b", "-nan"],
        ["fixed-point", "vanilla", "--mu-b", "-1e400"],
        ["fixed-point", "vanilla", "--sigma-w", ""],
        ["fixed-point", "vanilla", "--sigma-w", "abc"],
        ["fixed-point", "vanilla", "--bogus"],
        ["fixed-point", "vanilla", "--mu-b-f", "3"],
        ["fixed-point", "lstm", "--mu-b-z", "1"],
        ["fixed-point", "lstm", "--sigma-w-f", "-1"],
        ["fixed-point"],
    ],
    "phase-diagram": [
        ["phase-diagram", "vanilla", "--x", "sigma_w:1:0:5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "a:b:c", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5:6", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:nan:1:5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:inf:5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:1", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:-5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:2.5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:1000000000", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:" + BIG_INT, "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5000", "--y", "mu_b:0:1:5000", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:-1:1:5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "sigma_w:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_q:0:1:5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.txt"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--out", "/nonexistent/x.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--out", "{file}/x.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--out", "{ro}/x.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--out", "{tmp}"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--out", ""],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--sigma-w", "1",
         "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--R", "nan",
         "--out", "{tmp}/a.npz"],
        ["phase-diagram", "elman", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.npz"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5", "--out", "{tmp}/a.png",
         "--color", "blue"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1:5", "--y", "mu_b:0:1:5"],
        ["phase-diagram", "vanilla", "--x", "sigma_w:0:1e308:3", "--y", "sigma_b:0:1e308:3", "--out", "{tmp}/a.npz"],
    ],
    "critical": [
        ["critical", "vanilla"],
        ["critical", "elman", "--q-star", "1"],
        ["critical", "lstm", "--T", "0"],
        ["critical", "gru", "--T", "10", "--k", "-1"],
        ["critical", "vanilla", "--q-star", "-1"],
        ["critical", "vanilla", "--q-star", "0"],
        ["critical", "vanilla", "--q-star", "nan"],
        ["critical", "vanilla", "--q-star", "inf"],
        ["critical", "vanilla", "--q-star", ""],
        ["critical", "vanilla", "--q-star", "abc"],
        ["critical", "vanilla", "--q-star", HUGE],
        ["critical", "vanilla", "--q-star", "1e-300"],
        ["critical", "vanilla", "--q-star", "1", "--R", "-1"],
        ["critical", "vanilla", "--q-star", "1", "--sigma-b", HUGE],
        ["critical", "vanilla", "--q-star", "1", "--mu-b", HUGE],
        ["critical", "vanilla", "--q-star", "-1e-3"],
        ["critical", "vanilla", "--q-star", "1", "--sigma-b", "-inf"],
        ["critical", "vanilla", "--q-star", "1", "--T", "10"],
        ["critical", "vanilla", "--q-star", "1", "--gaussian"],
        ["critical", "minimal", "--T", "0"],
        ["critical", "minimal", "--T", "-3"],
        ["critical", "minimal", "--T", "2.5"],
        ["critical", "minimal", "--T", "1e12"],
        ["critical", "minimal", "--T", HUGE],
        ["critical", "minimal", "--T", "10", "--sigma-b", "1e6"],
        ["critical", "minimal", "--T", "10", "--sigma-w", "1e6"],
        ["critical", "minimal", "--T", "10", "--k", "-1"],
        ["critical", "minimal", "--T", "10", "--k", "0"],
        ["critical", "minimal", "--T", "10", "--max-spread", "-1"],
        ["critical", "minimal", "--T", "10", "--R", "0"],
        ["critical", "minimal", "--T", "10", "--mu-b", "1"],
        ["critical", "minimal", "--sigma-w", "-1"],
        ["critical", "minimal", "--sigma-w", "1e6"],
        ["critical", "minimal", "--sigma-w", "4", "--sigma-b", "1e6"],
        ["critical", "minimal", "--T", "10", "--bogus"],
    ],
    "spectrum": [
        ["spectrum", "vanilla"],
        ["spectrum", "elman", "--T", "3"],
        ["spectrum", "lstm", "--T", "3", "--out", "{tmp}/a.png"],
        ["spectrum", "gru-reset-before", "--T", "3"],
        ["spectrum", "", "--T", "3"],
        ["spectrum", "vanilla", "--T", "0"],
        ["spectrum", "vanilla", "--T", "-1"],
        ["spectrum", "vanilla", "--T", "2.5"],
        ["spectrum", "vanilla", "--T", "nan"],
        ["spectrum", "vanilla", "--T", "inf"],
        ["spectrum", "vanilla", "--T", ""],
        ["spectrum", "vanilla", "--T", HUGE],
        ["spectrum", "vanilla", "--T", BIG_INT],
        ["spectrum", "vanilla", "--T", "1e16"],
        ["spectrum", "vanilla", "--T", "3", "--sigma-w", "-1"],
        ["spectrum", "vanilla", "--T", "3", "--sigma-w", "nan"],
        ["spectrum", "vanilla", "--T", "3", "--sigma-v", HUGE],
        ["spectrum", "minimal", "--T", "3", "--sigma-b", HUGE],
        ["spectrum", "minimal", "--T", "3", "--R", "nan"],
        ["spectrum", "vanilla", "--T", "3", "--out", "{tmp}/s.npz"],
        ["spectrum", "vanilla", "--T", "3", "--out", "/nonexistent/x.png"],
        ["spectrum", "vanilla", "--T", "3", "--out", "{file}/x.png"],
        ["spectrum", "vanilla", "--T", "3", "--out", "{ro}/x.png"],
        ["spectrum", "vanilla", "--T", "3", "--out", "{tmp}"],
        ["spectrum", "vanilla", "--T", "1000", "--out", "{tmp}/s.png"],
        ["spectrum", "vanilla", "--T", "3", "--mu-b-f", "1"],
        ["spectrum", "vanilla", "--T", "3", "--bogus"],
    ],
    "digits": [
        ["digits"],
        ["digits", "--cell", "vanilla", "--init", "critical"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "elman", "--init", "critical"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "bogus"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--preset", "nope"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--hidden", "-5"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--hidden", "0"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--lr", "nan"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--lr", "-1"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--clip", "inf"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--steps", "-1"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--q-star", "-1"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--T-pad", "-1"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--weights", "uniform"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--dataset", "cifar"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--device", "tpu"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--threads", "0"],
        ["digits", "--out", "/nonexistent/r.json", "--cell", "vanilla", "--init", "critical"],
        ["digits", "--out", "{file}/r.json", "--cell", "vanilla", "--init", "critical"],
        ["digits", "--sweep", "tiny"],
        ["digits", "--sweep", "tiny", "--out-dir", "{file}"],
        ["digits", "--sweep", "nope", "--out-dir", "{tmp}/sw"],
        ["digits", "--sweep", "tiny", "--out-dir", "{tmp}/sw", "--seeds", "a,b"],
        ["digits", "--sweep", "tiny", "--out-dir", "{tmp}/sw", "--seeds", "1,1"],
        ["digits", "--sweep", "tiny", "--out-dir", "{tmp}/sw", "--cell", "vanilla"],
        ["digits", "--out", "{tmp}/r.json", "--seeds", "1,2"],
        ["digits", "--out", "{tmp}/r.json", "--cell", "vanilla", "--init", "critical", "--hidden", "abc"],
        ["digits", "--bogus"],
    ],
    "lm": [
        ["lm"],
        ["lm", "elman"],
        ["lm", ""],
        ["lm", "minimal", "--preset", "nope"],
        ["lm", "minimal", "--hidden", "-5", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--hidden", "abc"],
        ["lm", "minimal", "--lr", "nan", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--dropout", "2", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--epochs", "-1", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--corpus", "nope", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--checkpoint-every", "soon", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--checkpoint-every", "-5s", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--device", "tpu", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--threads", "0"],
        ["lm", "minimal", "--out", "/nonexistent/r.json"],
        ["lm", "minimal", "--out", "{file}/r.json"],
        ["lm", "minimal", "--out", "{ro}/r.json"],
        ["lm", "minimal", "--checkpoint", "{file}/c.ckpt", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--sigma-w", "-1", "--out", "{tmp}/r.json"],
        ["lm", "lstm", "--sigma-w", "1", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--match-params", "elman", "--out", "{tmp}/r.json"],
        ["lm", "minimal", "--bogus"],
    ],
    "sweep": [
        ["sweep"],
        ["sweep", "--preset", "huge", "--out", "{tmp}/t.sqlite"],
        ["sweep", "--preset", "tiny"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.csv"],
        ["sweep", "--preset", "tiny", "--out", "/nonexistent/t.sqlite"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.sqlite", "--workers", "0"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.sqlite", "--workers", "two"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.sqlite", "--threads", "0"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.sqlite", "--diagrams", "lstm-forget"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.sqlite", "--diagrams", "vanilla-gaussian,vanilla-gaussian"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.sqlite", "--seeds", "a,b"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.sqlite", "--steps", "0"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.sqlite", "--device", "tpu"],
        ["sweep", "--plot", "{tmp}/missing.sqlite", "--figure", "{tmp}/f.png"],
        ["sweep", "--plot", "{file}", "--figure", "{tmp}/f.png"],
        ["sweep", "--summary", "{tmp}/missing.sqlite"],
        ["sweep", "--preset", "tiny", "--out", "{tmp}/t.sqlite", "--bogus"],
    ],
    "seizure": [
        ["seizure"],
        ["seizure", "--bogus"],
        ["seizure", "--out", "/nonexistent/folder"],
        ["seizure", "--out", "{file}"],
        ["seizure", "--out", "{tmp}", "--T", "0"],
        ["seizure", "--out", "{tmp}", "--T", "abc"],
        ["seizure", "--out", "{tmp}", "--T", "-5"],
        ["seizure", "--out", "{tmp}", "--steps", "0"],
        ["seizure", "--out", "{tmp}", "--channels", "0"],
        ["seizure", "--out", "{tmp}", "--cells", "transformer"],
        ["seizure", "--out", "{tmp}", "--inits", "chrono"],
        ["seizure", "--out", "{tmp}", "--seeds", "a"],
        ["seizure", "--out", "{tmp}", "--seeds", "-1"],
        ["seizure", "--out", "{tmp}", "--device", "tpu"],
        ["seizure", "--out", "{tmp}", "--threads", "0"],
        ["seizure", "--out", "{tmp}", "--threads", "x"],
    ],
    "top": [
        [],
        ["nonsense"],
        ["--bogus"],
        ["--versoin"],
        ["fixed_point", "vanilla"],
    ],
    "longseq": [
        ["longseq"],
        ["longseq", "copy"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10"],
        ["longseq", "adding", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "elman", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "xavier", "--T", "10", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "0", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "-5", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "2.5", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", BIG_INT, "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--hidden", BIG_INT, "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--lr", "nan", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--lr", "-1e-3", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--clip", "inf", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--optimizer", "sgd", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--pad", "noise", "--out", "{tmp}/r.json"],
        ["longseq", "digits", "lstm", "--init", "chrono", "--T", "10", "--pad", "zeros", "--out", "{tmp}/r.json"],
        ["longseq", "digits", "lstm", "--init", "chrono", "--T", "10", "--dataset", "cifar", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--device", "tpu", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--threads", "0", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--checkpoint-every", "often", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.txt"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--out", "/nonexistent/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{file}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--grid", "huge", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--seeds", "0,1", "--out", "{tmp}/r.json"],
        ["longseq", "--sweep", "cpu"],
        ["longseq", "--sweep", "nope", "--out-dir", "{tmp}"],
        ["longseq", "--sweep", "cpu", "--out-dir", "{file}"],
        ["longseq", "--sweep", "cpu", "--out-dir", "{tmp}", "--seeds", "0,x"],
        ["longseq", "--sweep", "cpu", "--out-dir", "{tmp}", "--T", "5"],
        ["longseq", "--sweep", "cpu", "--out-dir", "{tmp}", "--inits", "he"],
        ["longseq", "--sweep", "cpu", "--out-dir", "{tmp}", "--tasks", "adding"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--bogus", "--out", "{tmp}/r.json"],
        ["longseq", "copy", "lstm", "--init", "chrono", "--T", "10", "--hidden", "abc", "--out", "{tmp}/r.json"],
    ],
    "diagnose": [
        ["diagnose"],
        ["diagnose", "{tmp}/missing.pt", "--T", "10"],
        ["diagnose", "{file}", "--T", "10"],
        ["diagnose", "{tmp}", "--T", "10"],
        ["diagnose", "{file}"],
        ["diagnose", "{file}", "--T", "0"],
        ["diagnose", "{file}", "--T", "-5"],
        ["diagnose", "{file}", "--T", "nan"],
        ["diagnose", "{file}", "--T", "inf"],
        ["diagnose", "{file}", "--T", "2.5"],
        ["diagnose", "{file}", "--T", BIG_INT],
        ["diagnose", "{file}", "--T", "10", "--R", "-1"],
        ["diagnose", "{file}", "--T", "10", "--R", "nan"],
        ["diagnose", "{file}", "--T", "10", "--max-steps", "0"],
        ["diagnose", "{file}", "--T", "10", "--cell", "elman", "--hidden", "8", "--input", "4"],
        ["diagnose", "{file}", "--T", "10", "--hidden", "abc"],
        ["diagnose", "{file}", "--T", "10", "--bogus"],
    ],
}
CASES = [(group, argv) for group, argvs in BAD.items() for argv in argvs]


class Reached(BaseException):
    """Raised by the stand-ins for training and data loading: validation let a bad input through."""


def _stop(*args, **kwargs):
    raise Reached("argument validation passed: training or data loading was reached")


@pytest.fixture
def no_training(monkeypatch):
    from mftrnn.experiments import lm, seqdigits
    for name in ("train", "run_sweep", "load_digits", "load_mnist", "load_sklearn_digits"):
        if hasattr(seqdigits, name):
            monkeypatch.setattr(seqdigits, name, _stop)
    for name in ("train", "load_lm_corpus"):
        monkeypatch.setattr(lm, name, _stop)
    from mftrnn.experiments import longseq
    for name in ("train", "run_sweep", "step_seconds"):
        monkeypatch.setattr(longseq, name, _stop)
    from mftrnn.experiments import sweep
    monkeypatch.setattr(sweep, "run_sweep", _stop)
    from mftrnn.experiments import seizure
    for name in ("train", "step_seconds"):
        monkeypatch.setattr(seizure, name, _stop)
    monkeypatch.delenv("MFTRNN_DEBUG", raising=False)


def _fill(argv, tmp_path):
    file = tmp_path / "afile"
    file.write_text("x")
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    return [a.replace("{tmp}", str(tmp_path)).replace("{file}", str(file)).replace("{ro}", str(ro)) for a in argv]


def _id(case):
    group, argv = case
    return " ".join([group] + [a[:20] for a in argv])[:80]


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_input(case, tmp_path, capsys, monkeypatch, no_training):
    group, argv = case
    if any("{ro}" in a for a in argv) and os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder")
    monkeypatch.chdir(tmp_path)  # default output names (lm) land here
    argv = _fill(argv, tmp_path)
    before = {p.name for p in tmp_path.iterdir()}
    t0 = time.perf_counter()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: usage error, status 2
        elapsed = time.perf_counter() - t0
        out, err = capsys.readouterr()
        assert exc.code == 2, (exc.code, err)
        assert "Traceback" not in err and "Traceback" not in out
        lines = err.strip().splitlines()
        assert lines and lines[0].startswith("usage: mftrnn"), err
        assert lines[-1].startswith("mftrnn") and ": error: " in lines[-1], err
    else:
        elapsed = time.perf_counter() - t0
        out, err = capsys.readouterr()
        assert rc == 1, (rc, err)  # 1: input error; 3 would be an internal error
        assert_one_line_error(rc, out, err)
    assert elapsed < 10, f"took {elapsed:.1f} s"
    made = {p.name for p in tmp_path.iterdir()} - before
    assert not made, f"left files behind: {made}"


def test_every_subcommand_is_fuzzed():
    import argparse

    from mftrnn.cli.app import _build_parser
    parser = _build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in sub.choices:
        assert len(BAD[name]) >= 15, name


@pytest.mark.parametrize("argv", [
    ["fixed-point", "vanilla", "--mu-b", "-1e-1", "--json"],
    ["fixed-point", "vanilla", "--mu-b", "-.5", "--json"],
    ["critical", "vanilla", "--q-star", "1", "--mu-b", "-2E-1", "--json"],
])
def test_negative_numbers_with_exponents_are_values(capsys, argv):
    # argparse alone takes "-1e-1" for an option ("expected one argument"); the command line reads it as a number
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, err
    assert out.startswith("{")
