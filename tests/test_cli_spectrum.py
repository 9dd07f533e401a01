"""Tests of ``mftrnn spectrum`` (moments of the T-step Jacobian's spectrum on the command line)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import mftrnn
from mftrnn.cli.app import main

from _cli import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cell,params,T,orthogonal", [
    ("minimal", {"sigma_w": 2.0, "mu_b": 1.0}, 5, False),
    ("minimal", {"sigma_w": 1.5, "sigma_v": 0.5, "sigma_b": 0.3, "mu_b": 3.0, "R": 0.7}, 1, True),
    ("vanilla", {}, 3, True),
    ("vanilla", {"sigma_w": 1.3, "sigma_v": 0.2, "mu_b": -0.2}, 10, False),
])
def test_json_matches_library(capsys, cell, params, T, orthogonal):
    argv = ["spectrum", cell, "--T", str(T), "--json"] + (["--orthogonal"] if orthogonal else [])
    for k, v in params.items():
        argv += ["--" + k.replace("_", "-"), repr(v)]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, err
    assert len(out.strip().splitlines()) == 1
    got = json.loads(out)
    assert {"mean", "variance", "relative_variance", "chi", "T", "orthogonal", "cell"} <= set(got)
    assert got["T"] == T and got["orthogonal"] is orthogonal and got["cell"] == cell
    for name, default in mftrnn.DEFAULTS.items():
        assert got[name] == params.get(name, default)
    ref = mftrnn.product_moments(cell, T, orthogonal=orthogonal, **params)
    for key in ("mean", "variance", "relative_variance", "chi", "variance_independent", "q_star", "Q_star"):
        assert math.isclose(got[key], ref[key], rel_tol=1e-12), key
    # the free-probability relations
    assert math.isclose(got["mean"], got["chi"] ** T, rel_tol=1e-9)
    assert math.isclose(got["relative_variance"], T * got["relative_variance_step"], rel_tol=1e-12)
    assert math.isclose(got["variance"], got["relative_variance"] * got["mean"] ** 2, rel_tol=1e-12)


def test_table_output(capsys):
    rc, out, err = run_cli(capsys, "spectrum", "minimal", "--sigma-w", "2", "--mu-b", "3", "--T", "4")
    assert rc == 0, err
    ref = mftrnn.product_moments("minimal", 4, sigma_w=2.0, mu_b=3.0)
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.strip()}
    assert math.isclose(float(rows["mean"]), ref["mean"], rel_tol=1e-9)
    assert math.isclose(float(rows["variance"]), ref["variance"], rel_tol=1e-9)
    assert "Gaussian W" in out.splitlines()[0]


@pytest.mark.parametrize("argv", [
    ["spectrum", "gru-reset-before", "--T", "3"],
    ["spectrum", "vanilla", "--T", "0"],
    ["spectrum", "vanilla", "--T", "2.5"],
    ["spectrum", "vanilla", "--T", "ten"],
    ["spectrum", "vanilla", "--T", "inf"],
    ["spectrum", "vanilla", "--T", "3", "--sigma-w", "-1"],
    ["spectrum", "minimal", "--T", "3", "--R", "nan"],
    ["spectrum", "vanilla", "--T", "3", "--out", "spectrum.npz"],
    ["spectrum", "vanilla", "--T", "3", "--out", "/no/such/dir/x.png"],
])
def test_bad_input_one_line(capsys, argv):
    rc, out, err = run_cli(capsys, *argv)
    assert_one_line_error(rc, out, err)


def test_missing_T_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["spectrum", "vanilla"])
    assert exc.value.code != 0
    assert "--T" in capsys.readouterr().err


def test_density_png(capsys, tmp_path):
    # the density comes from mftrnn.theory.spectrum (another module); without it, --out is a clear one-line error
    path = tmp_path / "density.png"
    rc, out, err = run_cli(capsys, "spectrum", "vanilla", "--sigma-w", "1.2", "--T", "2", "--out", str(path))
    if importlib.util.find_spec("mftrnn.theory.spectrum") is None:
        assert_one_line_error(rc, out, err)
        assert "mftrnn.theory.spectrum" in err and not path.exists()
    else:
        assert rc == 0, err
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary file


def test_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "mftrnn", "spectrum", "vanilla", "--T", "2", "--json"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["T"] == 2
