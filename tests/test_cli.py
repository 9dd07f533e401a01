"""Tests of the ``mftrnn`` command line (mftrnn/cli.py, ``python -m mftrnn``)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mftrnn
import mftrnn.theory.phase_diagram
from mftrnn.cli.app import main

from _cli import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = {"q_star", "Q_star", "chi", "chi_q", "xi"}
CORRELATION_KEYS = {"C_star", "c_star", "chi_c", "xi_c"}


def close(a, b, rtol=1e-12):
    if a is None or b is None:
        return a is None and b is None
    if not isinstance(a, float) or not isinstance(b, float):
        return a == b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-300)


# ------------------------------------------------------------------------------------ fixed-point

@pytest.mark.parametrize("cell,params", [
    ("minimal", {}),
    ("minimal", {"sigma_w": 2.0, "sigma_v": 0.5, "sigma_b": 0.3, "mu_b": 1.5, "R": 0.7}),
    ("vanilla", {}),
    ("vanilla", {"sigma_w": 0.8, "sigma_v": 1.2, "sigma_b": 0.1, "mu_b": -0.5, "R": 2.0}),
])
def test_fixed_point_json_matches_engine(capsys, cell, params):
    argv = ["fixed-point", cell, "--json"]
    for k, v in params.items():
        argv += ["--" + k.replace("_", "-"), repr(v)]
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1  # one JSON object
    got = json.loads(lines[0])
    assert REQUIRED_KEYS | CORRELATION_KEYS <= set(got)

    full = dict(mftrnn.cli.app.DEFAULTS, **params)
    ref = mftrnn.fixed_point(cell, correlations=True, **full).to_dict()
    for key, value in ref.items():
        assert close(got[key], value), (key, got[key], value)
    assert got["cell"] == cell
    for key, value in full.items():
        assert got[key] == value
    assert 0.0 < got["chi"] < 1.0
    assert got["xi"] == pytest.approx(-1.0 / math.log(got["chi"]), rel=1e-12)


def test_fixed_point_defaults_are_the_documented_ones(capsys):
    rc, out, _ = run_cli(capsys, "fixed-point", "minimal", "--json")
    assert rc == 0
    got = json.loads(out)
    ref = mftrnn.fixed_point("minimal", sigma_w=1.0, sigma_v=1.0, sigma_b=0.0, mu_b=0.0, R=1.0,
                             correlations=True)
    assert got["Q_star"] == pytest.approx(float(ref.Q_star), rel=1e-14)


def test_fixed_point_xi_null_when_chi_at_least_one(capsys):
    params = {"sigma_w": 3.0, "sigma_v": 0.0}
    fp = mftrnn.fixed_point("vanilla", **params)
    assert float(fp.chi) >= 1.0  # premise: chaotic phase
    rc, out, err = run_cli(capsys, "fixed-point", "vanilla", "--sigma-w", "3", "--sigma-v", "0", "--json")
    assert rc == 0, err
    assert "NaN" not in out and "Infinity" not in out
    got = json.loads(out)
    assert got["chi"] >= 1.0
    assert got["xi"] is None


def test_fixed_point_table(capsys):
    rc, out, err = run_cli(capsys, "fixed-point", "minimal", "--sigma-w", "2", "--mu-b", "1")
    assert rc == 0, err
    ref = mftrnn.fixed_point("minimal", sigma_w=2.0, mu_b=1.0, correlations=True).to_dict()
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            rows[parts[0]] = parts[1]
    for key in REQUIRED_KEYS:
        assert key in rows, out
    assert float(rows["Q_star"]) == pytest.approx(ref["Q_star"], rel=1e-9)
    assert float(rows["chi"]) == pytest.approx(ref["chi"], rel=1e-9)
    assert float(rows["sigma_w"]) == 2.0


def test_fixed_point_table_shows_infinite_xi(capsys):
    rc, out, _ = run_cli(capsys, "fixed-point", "vanilla", "--sigma-w", "3", "--sigma-v", "0")
    assert rc == 0
    xi_line = next(line for line in out.splitlines() if line.split()[:1] == ["xi"])
    assert xi_line.split()[1] == "inf"


# ---------------------------------------------------------------------------------- phase-diagram

def test_phase_diagram_npz(tmp_path, capsys):
    out_file = tmp_path / "pd.npz"
    rc, out, err = run_cli(capsys, "phase-diagram", "minimal", "--x", "sigma_w:0.5:3:6",
                           "--y", "mu_b:-2:4:5", "--sigma-v", "0.7", "--R", "1.5",
                           "--out", str(out_file))
    assert rc == 0, err
    assert "Traceback" not in err
    assert out_file.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pd.npz"]  # no temp files left
    with np.load(out_file) as d:
        for key in ("chi", "xi", "Q_star", "q_star"):
            assert d[key].shape == (5, 6)
            assert d[key].dtype == np.float64
        np.testing.assert_allclose(d["x"], np.linspace(0.5, 3, 6))
        np.testing.assert_allclose(d["y"], np.linspace(-2, 4, 5))
        assert str(d["x_name"]) == "sigma_w" and str(d["y_name"]) == "mu_b"
        assert str(d["cell"]) == "minimal"
        assert str(d["mftrnn_version"]) == str(getattr(mftrnn, "__version__", d["mftrnn_version"]))
        assert float(d["sigma_v"]) == 0.7 and float(d["R"]) == 1.5 and float(d["sigma_b"]) == 0.0
        assert "sigma_w" not in d.files and "mu_b" not in d.files
        chi, xi, Q, q = d["chi"], d["xi"], d["Q_star"], d["q_star"]
        y, x = d["y"], d["x"]
    assert np.all(np.isfinite(chi)) and np.all(np.isfinite(Q)) and not np.any(np.isnan(xi))
    # rows are y (mu_b), columns are x (sigma_w); compare with scalar engine calls
    for i, j in [(0, 0), (4, 5), (2, 3)]:
        ref = mftrnn.fixed_point("minimal", sigma_w=x[j], mu_b=y[i], sigma_v=0.7, sigma_b=0.0, R=1.5)
        assert chi[i, j] == pytest.approx(float(ref.chi), rel=1e-12)
        assert Q[i, j] == pytest.approx(float(ref.Q_star), rel=1e-12)
        assert q[i, j] == pytest.approx(float(ref.q_star), rel=1e-12)
        assert xi[i, j] == pytest.approx(float(ref.xi), rel=1e-12)


def test_phase_diagram_png_and_npz_beside(tmp_path, capsys):
    out_file = tmp_path / "fig.png"
    rc, out, err = run_cli(capsys, "phase-diagram", "vanilla", "--x", "sigma_w:0.5:3:6",
                           "--y", "sigma_b:0:1:5", "--sigma-v", "0", "--out", str(out_file))
    assert rc == 0, err
    assert out_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    npz = tmp_path / "fig.npz"
    assert npz.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.npz", "fig.png"]
    with np.load(npz) as d:
        assert d["chi"].shape == (5, 6)
        # this grid crosses the order-to-chaos transition, so xi is infinite somewhere
        assert d["chi"].max() >= 1.0 > d["chi"].min()
        assert np.all(np.isinf(d["xi"][d["chi"] >= 1.0]))


def test_phase_diagram_png_chi_colour(tmp_path, capsys):
    out_file = tmp_path / "chi.png"
    rc, _, err = run_cli(capsys, "phase-diagram", "minimal", "--x", "mu_b:-3:3:6",
                         "--y", "sigma_v:0.1:2:5", "--color", "chi", "--out", str(out_file))
    assert rc == 0, err
    assert out_file.stat().st_size > 1000
    assert (tmp_path / "chi.npz").exists()


def test_phase_diagram_overwrites_atomically(tmp_path, capsys):
    out_file = tmp_path / "pd.npz"
    out_file.write_bytes(b"old")
    rc, _, err = run_cli(capsys, "phase-diagram", "minimal", "--x", "sigma_w:0.5:3:3",
                         "--y", "mu_b:-2:4:2", "--out", str(out_file))
    assert rc == 0, err
    with np.load(out_file) as d:
        assert d["chi"].shape == (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pd.npz"]


# --------------------------------------------------------------------------------------- bad input

GRID = ["--x", "sigma_w:0.5:3:6", "--y", "mu_b:-2:4:5"]


@pytest.mark.parametrize("argv", [
    ["fixed-point", "elman"],
    ["fixed-point", "lstm", "--mu-b-z", "1"],
    ["fixed-point", "gru", "--sigma-w-n", "-1"],
    ["fixed-point", "gru", "--mu-b-f", "nan"],
    ["fixed-point", "minimal", "--mu-b-f", "1"],
    ["phase-diagram", "gru", "--x", "mu_b_f:0:3:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "mu_b_f:0:3:5", "--y", "mu_b:-2:4:5"],
    ["fixed-point", "minimal", "--sigma-w", "-1"],
    ["fixed-point", "minimal", "--sigma-v", "-0.5"],
    ["fixed-point", "vanilla", "--sigma-b", "-2"],
    ["fixed-point", "minimal", "--R", "-1"],
    ["fixed-point", "minimal", "--sigma-w", "nan"],
    ["fixed-point", "vanilla", "--sigma-v", "inf", "--json"],
    ["fixed-point", "minimal", "--mu-b", "inf"],
    ["fixed-point", "minimal", "--R", "nan", "--json"],
    ["phase-diagram", "elman", *GRID],
    ["phase-diagram", "minimal", "--x", "sigma_w:0:3", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:0:3:5:7", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:0:3:1", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:0:3:0", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:0:3:2.5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:3:0:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:1:1:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:a:3:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:0:inf:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:nan:3:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_w:-1:3:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "R:-1:3:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "sigma_q:0:3:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "Sigma:0:1:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", "--x", "mu_b:0:3:5", "--y", "mu_b:-2:4:5"],
    ["phase-diagram", "minimal", *GRID, "--sigma-w", "2"],
    ["phase-diagram", "minimal", *GRID, "--sigma-v", "-1"],
    ["phase-diagram", "minimal", *GRID, "--sigma-b", "nan"],
    ["phase-diagram", "minimal", *GRID, "--R", "inf"],
])
def test_bad_input_one_line_error(tmp_path, capsys, argv):
    if argv[0] == "phase-diagram":
        argv = argv + ["--out", str(tmp_path / "out.npz")]
    rc, out, err = run_cli(capsys, *argv)
    assert_one_line_error(rc, out, err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make_out", [
    lambda d: d / "missing_dir" / "out.npz",           # directory does not exist
    lambda d: d,                                        # a directory, not a file
    lambda d: d / "out.txt",                            # unknown extension
    lambda d: d / "out",                                # no extension
    lambda d: d / "out.pdf",
    lambda d: (d / "afile").write_text("x") or d / "afile" / "out.npz",  # parent is a file
])
def test_bad_output_one_line_error(tmp_path, capsys, make_out):
    out_file = make_out(tmp_path)
    before = sorted(tmp_path.iterdir())
    rc, out, err = run_cli(capsys, "phase-diagram", "minimal", *GRID, "--out", str(out_file))
    assert_one_line_error(rc, out, err)
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, out, err = run_cli(capsys, "phase-diagram", "minimal", *GRID, "--out", str(ro / "x.png"))
    finally:
        ro.chmod(0o700)
    assert_one_line_error(rc, out, err)


def _raise_convergence(*args, **kwargs):
    raise mftrnn.ConvergenceError("fixed point did not converge after 10000 iterations\n(test)")


@pytest.mark.parametrize("argv", [
    ["fixed-point", "minimal", "--json"],
    ["fixed-point", "vanilla"],
    ["phase-diagram", "minimal", *GRID],
])
def test_convergence_error_is_one_line(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.setattr(mftrnn, "fixed_point", _raise_convergence)
    monkeypatch.setattr(mftrnn.theory.phase_diagram, "fixed_point", _raise_convergence)
    if argv[0] == "phase-diagram":
        argv = argv + ["--out", str(tmp_path / "out.png")]
    rc, out, err = run_cli(capsys, *argv)
    assert_one_line_error(rc, out, err)
    assert "converge" in err
    assert list(tmp_path.iterdir()) == []


def test_domain_error_from_engine_is_one_line(capsys, monkeypatch):
    def raiser(*args, **kwargs):
        raise mftrnn.DomainError("sigma_w must be >= 0")
    monkeypatch.setattr(mftrnn, "fixed_point", raiser)
    rc, out, err = run_cli(capsys, "fixed-point", "minimal")
    assert_one_line_error(rc, out, err)


def test_nan_from_engine_is_an_error_not_silent(tmp_path, capsys, monkeypatch):
    real = mftrnn.fixed_point

    class NanFP:
        def __init__(self, fp):
            self._fp = fp

        def __getattr__(self, name):
            value = getattr(self._fp, name)
            if name == "chi":
                value = np.full(np.shape(value), np.nan)
            return value

        def to_dict(self):
            d = self._fp.to_dict()
            d["chi"] = float("nan")
            return d

    monkeypatch.setattr(mftrnn, "fixed_point", lambda *a, **k: NanFP(real(*a, **k)))
    monkeypatch.setattr(mftrnn.theory.phase_diagram, "fixed_point", lambda *a, **k: NanFP(real(*a, **k)))
    rc, out, err = run_cli(capsys, "fixed-point", "minimal", "--json")
    assert_one_line_error(rc, out, err)
    rc, out, err = run_cli(capsys, "phase-diagram", "minimal", *GRID, "--out", str(tmp_path / "a.npz"))
    assert_one_line_error(rc, out, err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    [],
    ["fixed-point"],
    ["phase-diagram", "minimal", "--x", "sigma_w:0:3:5", "--y", "mu_b:0:1:5"],  # no --out
    ["fixed-point", "minimal", "--sigma-w", "abc"],
    ["fixed-point", "minimal", "--bogus"],
    ["phase-diagram", "minimal", *GRID, "--out", "a.png", "--color", "blue"],
])
def test_argparse_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    _, err = capsys.readouterr()
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------- entry point

def _subprocess(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MFTRNN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "mftrnn", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_python_dash_m_entry_point():
    proc = _subprocess("fixed-point", "minimal", "--sigma-w", "1.5", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    ref = mftrnn.fixed_point("minimal", sigma_w=1.5, correlations=True).to_dict()
    assert got["chi"] == pytest.approx(ref["chi"], rel=1e-12)
    assert got["Q_star"] == pytest.approx(ref["Q_star"], rel=1e-12)

    proc = _subprocess("fixed-point", "elman")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("mftrnn: error: ")
