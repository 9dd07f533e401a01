"""``mftrnn critical``: JSON output equals the library's, text output, one-line errors."""
from __future__ import annotations

import functools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import mftrnn as mf

from _cli import assert_one_line_error as _one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]
# a refused `critical` call prints nothing on stdout
assert_one_line_error = functools.partial(_one_line_error, empty_stdout=True)


def _same(cli, lib):
    for k, v in lib.items():
        if isinstance(v, float) and math.isinf(v):
            assert cli[k] is None, k
        elif isinstance(v, float):
            assert cli[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k
        else:
            assert cli[k] == v, k


@pytest.mark.parametrize("argv,fn,kw", [
    (["vanilla", "--q-star", "1"], mf.vanilla_critical, dict(q_star=1.0)),
    (["vanilla", "--q-star", "3", "--mu-b", "0.5", "--sigma-b", "0.2", "--R", "2"], mf.vanilla_critical,
     dict(q_star=3.0, mu_b=0.5, sigma_b=0.2, R=2.0)),
    (["minimal", "--T", "50"], mf.minimal_for_timescale, dict(T=50)),
    (["minimal", "--T", "30", "--k", "2", "--sigma-w", "1.5", "--gaussian", "--sigma-v", "0.8"],
     mf.minimal_for_timescale, dict(T=30, k=2.0, sigma_w=1.5, orthogonal=False, sigma_v=0.8)),
    (["minimal", "--T", "40", "--max-spread", "0.2"], mf.minimal_for_timescale, dict(T=40, max_spread=0.2)),
    (["minimal", "--sigma-w", "4.5"], mf.minimal_critical_mu_b, dict(sigma_w=4.5)),
])
def test_json_matches_library(capsys, argv, fn, kw):
    rc, out, err = run_cli(capsys, "critical", *argv, "--json")
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 1
    data = json.loads(out)
    assert data["cell"] == argv[0]
    lib = fn(**kw)
    _same(data, lib)
    for key in ("sigma_w", "sigma_v", "sigma_b", "mu_b", "R", "chi", "xi"):
        assert key in data
    if argv[0] == "vanilla" or "--T" not in argv:
        assert data["xi"] is None and data["chi"] == pytest.approx(1.0, abs=1e-9)
    else:
        assert data["xi"] == pytest.approx(data["k"] * data["T"], rel=1e-8)


def test_text_output(capsys):
    rc, out, err = run_cli(capsys, "critical", "minimal", "--T", "10")
    assert rc == 0, err
    lib = mf.minimal_for_timescale(10)
    assert out.splitlines()[0].startswith("minimalRNN with timescale xi = k T = 10")
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.startswith("  ")}
    assert float(rows["mu_b"]) == pytest.approx(lib["mu_b"], rel=1e-9)
    assert float(rows["xi"]) == pytest.approx(10, rel=1e-9)
    assert "note: no candidate reaches spread" in out  # T = 10 is too short to be that narrow (lib: narrow False)
    assert lib["narrow"] is False
    rc, out, err = run_cli(capsys, "critical", "vanilla", "--q-star", "0.5")
    assert rc == 0 and "(infinite)" in out and "sigma_v" in out


@pytest.mark.parametrize("argv,fragment", [
    (["vanilla"], "give --q-star"),
    (["vanilla", "--q-star", "abc"], "not a number"),
    (["vanilla", "--q-star", "nan"], "finite"),
    (["vanilla", "--q-star", "-1"], "q_star must be > 0"),
    (["vanilla", "--q-star", "0.5", "--mu-b", "1"], "infeasible"),
    (["vanilla", "--q-star", "1", "--R", "0"], "R = 0"),
    (["vanilla", "--q-star", "1", "--sigma-w", "2"], "--sigma-w not accepted"),
    (["vanilla", "--q-star", "1", "--T", "10"], "--T not accepted"),
    (["vanilla", "--q-star", "1", "--gaussian"], "--gaussian"),
    (["minimal"], "give --T"),
    (["minimal", "--T", "2.5"], "integer"),
    (["minimal", "--T", "0"], "integer"),
    (["minimal", "--T", "10", "--mu-b", "2"], "--mu-b not accepted"),
    (["minimal", "--T", "10", "--q-star", "1"], "--q-star not accepted"),
    (["minimal", "--T", "10", "--R", "-1"], "R must be >= 0"),
    (["minimal", "--T", "100000000"], "exceeds"),
    (["minimal", "--sigma-w", "2"], "no chi = 1 point"),
    (["minimal", "--sigma-w", "5", "--gaussian"], "--gaussian"),
    (["elman", "--T", "10"], "unknown cell"),
    (["gru-reset-before", "--T", "10"], "no critical initialisation for cell 'gru-reset-before'"),
])
def test_one_line_errors(capsys, argv, fragment):
    rc, out, err = run_cli(capsys, "critical", *argv)
    assert_one_line_error(rc, out, err)
    assert fragment in err


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "mftrnn", "critical", "vanilla", "--q-star", "2", "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sigma_w"] == pytest.approx(mf.vanilla_critical(2.0)["sigma_w"], rel=1e-12)
