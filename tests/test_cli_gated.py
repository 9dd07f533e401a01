"""Command line for gated cells: fixed-point (per-gate options, JSON keys) and phase-diagram over a per-gate axis."""
import json

import numpy as np
import pytest

import mftrnn as mf
from _cli import assert_one_line_error, run_cli


def test_fixed_point_lstm_json(capsys):
    rc, out, err = run_cli(capsys, "fixed-point", "lstm", "--sigma-w", "0.5", "--mu-b-f", "2", "--json")
    assert rc == 0, err
    got = json.loads(out)
    ref = mf.fixed_point("lstm", sigma_w=0.5, mu_b_f=2.0)
    for key in ("Q_star", "Qc_star", "chi", "xi"):
        assert got[key] == pytest.approx(float(getattr(ref, key)), rel=1e-12)
    assert got["mu_b_f"] == 2.0 and got["mu_b_i"] == 0.0 and got["sigma_w_o"] == 0.5
    assert set(got["q_stars"]) == {"e_i", "e_f", "e_g", "e_o"}
    assert got["q_star"] == got["q_stars"]["e_i"]


def test_fixed_point_gru_text(capsys):
    rc, out, err = run_cli(capsys, "fixed-point", "gru", "--mu-b-z", "1")
    assert rc == 0, err
    assert "Q_star" in out and "chi_q" in out and "q[e_nh]" in out


def test_phase_diagram_per_gate_axis(capsys, tmp_path):
    path = tmp_path / "gru.npz"
    rc, out, err = run_cli(capsys, "phase-diagram", "gru", "--x", "sigma_w:0.5:1.5:3", "--y", "mu_b_z:0:2:2",
                           "--sigma-v", "0.5", "--out", str(path), "--no-progress")
    assert rc == 0, err
    data = np.load(path)
    assert data["chi"].shape == (2, 3)
    ref = mf.fixed_point("gru", sigma_w=1.5, mu_b_z=2.0, sigma_v=0.5)
    assert data["chi"][1, 2] == pytest.approx(ref.chi, rel=1e-12)


@pytest.mark.parametrize("argv, fragment", [
    (["fixed-point", "lstm", "--mu-b-r", "1"], "unknown hyperparameter(s) ['mu_b_r'] for cell 'lstm'"),
    (["fixed-point", "gru", "--sigma-v-n", "-2"], "sigma_v_n must be >= 0"),
    (["fixed-point", "vanilla", "--sigma-w-i", "1"], "per-gate options are for gated cells"),
    (["spectrum", "gru", "--T", "3", "--out", "x.png"], "spectral density of gru is not derived"),
])
def test_one_line_errors(capsys, argv, fragment):
    rc, out, err = run_cli(capsys, *argv)
    assert_one_line_error(rc, out, err)
    assert fragment in err


def test_spectrum_gru_json_is_the_library_result(capsys):
    rc, out, err = run_cli(capsys, "spectrum", "gru", "--mu-b-z", "2", "--T", "10", "--json")
    assert rc == 0 and err == ""
    d = json.loads(out)
    from mftrnn.theory.gated_jacobian import gated_product_moments
    ref = gated_product_moments("gru", 10, mu_b_z=2.0)
    assert d["mean"] == ref["mean"] and d["relative_variance_independent"] == ref["relative_variance_independent"]
    assert d["states"] == ["h"] and d["mu_b_z"] == 2.0


def test_critical_gru_json_chooses_the_timescale(capsys):
    rc, out, err = run_cli(capsys, "critical", "gru", "--T", "25", "--json")
    assert rc == 0 and err == ""
    d = json.loads(out)
    assert d["memory_gate"] == "z" and abs(d["xi"] - 25) < 1e-6 * 25
    # the chosen hyperparameters reproduce the timescale through the fixed point
    hp = {k: d[k] for k in d if k[:5] in ("sigma", "mu_b_") or k == "R"}
    assert mf.fixed_point("gru", **hp).xi == pytest.approx(25, rel=1e-6)


def test_fixed_point_gru_correlations(capsys):
    rc, out, err = run_cli(capsys, "fixed-point", "gru", "--mu-b-z", "2", "--correlations", "--json")
    assert rc == 0
    d = json.loads(out)
    fp = mf.fixed_point("gru", mu_b_z=2.0, correlations=True)
    assert d["chi_c"] == pytest.approx(float(fp.chi_c), rel=1e-12) and 0 <= d["chi_c"] <= 1
