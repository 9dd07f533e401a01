"""Long products: the T-step Jacobian moments for T up to 2^53 (mftrnn.theory.jacobian.product_moments) in log form,
at a cost independent of T; the degenerate sigma_w = 0 limit; sizes checked before allocating (critical scans,
phase-diagram grids); JSON-ready initialiser results."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

import mftrnn as mf
from _cli import run_cli
from mftrnn.theory.jacobian import MAX_T, _diagonal_recursion, _log_geometric_sums, _step

LOG_KEYS = ("log_mean", "log_variance", "log_m2", "log_variance_independent", "log_relative_variance_independent")
CASES = [("vanilla", dict(sigma_w=0.3)), ("vanilla", dict(sigma_w=1.0)), ("vanilla", dict(sigma_w=1.1)),
         ("vanilla", dict(sigma_w=3.0)), ("minimal", {}), ("minimal", dict(sigma_w=2.0, mu_b=1.0))]


# ------------------------------------------------------------------------------------------ long T, log form
@pytest.mark.parametrize("cell,hp", CASES)
@pytest.mark.parametrize("orthogonal", [False, True])
def test_huge_T_is_finite_in_log_form_and_fast(cell, hp, orthogonal):
    one = mf.product_moments(cell, 1, orthogonal=orthogonal, **hp)  # warms the caches (fixed point, compiled)
    for T in (460, 1000, 2000, 10 ** 6, 10 ** 12, MAX_T):
        t0 = time.perf_counter()
        r = mf.product_moments(cell, T, orthogonal=orthogonal, **hp)
        assert time.perf_counter() - t0 < 2.0, T  # O(log T): no loop over the steps
        for k in LOG_KEYS:
            assert math.isfinite(r[k]), (k, T, r[k])
        for k in ("relative_variance", "relative_variance_step", "chi"):
            assert math.isfinite(r[k]), (k, T)
        for k in ("mean", "variance", "m2", "variance_independent", "relative_variance_independent"):
            v = r[k]
            assert v is None or (math.isfinite(v) and v > 0), (k, T, v)  # never 0/inf/NaN for a non-zero value
            if v is not None:
                assert math.log(v) == pytest.approx(r["log" + "_" + k], rel=1e-9, abs=1e-9)
        # the identities of the free product of T i.i.d. factors
        assert r["log_mean"] == pytest.approx(T * one["log_mean"], rel=1e-13)
        assert r["log_mean"] == pytest.approx(T * math.log(one["chi"]), rel=1e-13)
        assert r["relative_variance"] == pytest.approx(T * one["relative_variance_step"], rel=1e-13)
        assert r["log_variance"] == pytest.approx(math.log(T * r["relative_variance_step"]) + 2 * r["log_mean"],
                                                  rel=1e-12)


def test_issue_examples_no_longer_nan():
    for sw in (0.3, 1.0, 1.1):
        r = mf.product_moments("vanilla", 1000, sigma_w=sw)
        assert r["mean"] is None and r["log_mean"] < math.log(np.finfo(float).tiny)  # underflows: log form only
        assert r["relative_variance_independent"] == pytest.approx(r["relative_variance"], rel=1e-12)  # a = 0
    r = mf.product_moments("minimal", 2000)
    assert all(math.isfinite(r[k]) for k in LOG_KEYS)
    assert r["relative_variance_independent"] > r["relative_variance"]


def test_overflow_is_reported_in_log_form():
    r = mf.product_moments("vanilla", np.array([1, 10, 1000, 10 ** 12]), sigma_w=3.0)
    assert r["chi"] > 1
    assert np.all(np.isfinite(r["log_mean"])) and np.all(np.diff(r["log_mean"]) > 0)
    assert np.isfinite(r["mean"][:3]).all() and np.isnan(r["mean"][3])  # arrays: NaN marks "only in log form"
    np.testing.assert_allclose(r["mean"][:3], r["chi"] ** np.array([1, 10, 1000]), rtol=1e-12)


def test_values_unchanged_where_representable():
    # small T: linear keys as before (direct powers), logs consistent
    for cell, hp in CASES:
        Ts = np.arange(1, 9)
        r = mf.product_moments(cell, Ts, **hp)
        chi = r["chi"]
        np.testing.assert_allclose(r["mean"], chi ** Ts, rtol=1e-14)
        np.testing.assert_allclose(r["variance"], Ts * r["relative_variance_step"] * chi ** (2 * Ts), rtol=1e-13)
        np.testing.assert_allclose(r["m2"], r["variance"] + r["mean"] ** 2, rtol=1e-13)
        np.testing.assert_allclose(np.exp(r["log_mean"]), r["mean"], rtol=1e-13)


@pytest.mark.parametrize("cell,hp,orthogonal", [("minimal", dict(sigma_w=2.0, mu_b=1.0), False),
                                                ("minimal", {}, True), ("minimal", dict(mu_b=5.0), False),
                                                ("minimal", dict(sigma_w=0.5, mu_b=-1.0), True),
                                                ("vanilla", dict(sigma_w=1.3), True)])
def test_independent_closed_form_matches_the_recursion(cell, hp, orthogonal):
    _, _, _, pieces, _, _ = _step(cell, orthogonal, hp)
    Ts = [1, 2, 3, 7, 50, 150, 300]
    r = mf.product_moments(cell, np.array(Ts), orthogonal=orthogonal, **hp)
    phi, v, d = 1.0, 0.0, 0.0
    for t in range(1, Ts[-1] + 1):
        phi, v, d = _diagonal_recursion(pieces, orthogonal, phi, v, d)
        if t in Ts and phi ** 2 > 1e-290:  # (the reference recursion itself underflows beyond)
            i = Ts.index(t)
            assert r["relative_variance_independent"][i] == pytest.approx(v / phi ** 2, rel=1e-12), t
            assert r["variance_independent"][i] == pytest.approx(v, rel=1e-12), t


def test_monotone_in_T():
    Ts = np.unique(np.geomspace(1, 10 ** 12, 40).astype(np.int64))
    for cell, hp in CASES:
        r = mf.product_moments(cell, Ts, **hp)
        assert np.all(np.diff(r["relative_variance"]) > 0)
        assert np.all(np.diff(r["log_relative_variance_independent"]) > 0)
        assert np.all(r["log_relative_variance_independent"] >= np.log(r["relative_variance"]) - 1e-12)
        sign = np.sign(math.log(float(np.ravel(r["chi"])[0])))
        assert np.all(sign * np.diff(r["log_mean"]) > 0)


def test_log_geometric_sums():
    # S_n = sum_{j<n} b^j, G_n = sum_{t<n} S_t against direct sums, for b below, at and above 1 and b = 0
    for b in (0.0, 0.3, 0.999, 1.0, 1.001, 1.7):
        for n in (1, 2, 3, 5, 17, 64, 100):
            S = [sum(b ** j for j in range(t)) for t in range(n + 1)]
            G = sum(S[:n])
            lS, lG = _log_geometric_sums(math.log(b) if b else -np.inf, n)
            assert float(np.exp(lS)) == pytest.approx(S[n], rel=1e-13)
            assert (float(np.exp(lG)) == pytest.approx(G, rel=1e-13)) if G else np.isneginf(lG)
    # closed forms at huge n: b = 1 gives G = n(n-1)/2; b < 1 gives G ~ n/(1-b)
    n = 10 ** 12
    assert float(_log_geometric_sums(0.0, n)[1]) == pytest.approx(math.log(n * (n - 1) / 2), rel=1e-14)
    b = 0.5
    G = (n - (1 - b ** n) / (1 - b)) / (1 - b)
    assert float(_log_geometric_sums(math.log(b), n)[1]) == pytest.approx(math.log(G), rel=1e-14)


def test_T_limit_is_stated_and_enforced():
    assert mf.product_moments("vanilla", MAX_T)["T"] == MAX_T
    for T in (MAX_T + 1, 10 ** 30, 1e300, np.array([1, 2 ** 60])):
        t0 = time.perf_counter()
        with pytest.raises(mf.DomainError, match="at most|in \\[1"):
            mf.product_moments("vanilla", T)
        assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------------------- sigma_w = 0
@pytest.mark.parametrize("orthogonal", [False, True])
def test_sigma_w_zero_limit_is_exact(orthogonal):
    st = mf.step_moments("vanilla", orthogonal=orthogonal, sigma_w=0.0)
    assert st["m1"] == 0 and st["m2"] == 0 and st["variance"] == 0
    # vanilla, a = 0: r = m2/m1^2 - 1 = E[d^4]/E[d^2]^2 - 1 + kappa does not depend on sigma_w
    r0 = st["E_b4"] / st["E_b2"] ** 2 - (1.0 if orthogonal else 0.0)
    assert st["relative_variance"] == pytest.approx(r0, rel=1e-14)
    # and it is the limit sigma_w -> 0+ (the fixed point moves by O(sigma_w^2))
    for sw in (1e-3, 1e-6, 1e-160):
        near = mf.step_moments("vanilla", orthogonal=orthogonal, sigma_w=sw)
        assert near["relative_variance"] == pytest.approx(r0, rel=10 * sw ** 2 + 1e-12)
    pm = mf.product_moments("vanilla", 10, orthogonal=orthogonal, sigma_w=0.0)
    assert pm["mean"] == 0 and pm["variance"] == 0 and pm["m2"] == 0 and pm["variance_independent"] == 0
    assert pm["log_mean"] == -math.inf and pm["log_variance"] == -math.inf
    assert pm["relative_variance"] == pytest.approx(10 * r0, rel=1e-14)
    assert pm["relative_variance_independent"] == pytest.approx(10 * r0, rel=1e-12)
    iso = mf.isometry("vanilla", orthogonal=orthogonal, sigma_w=0.0)
    assert math.isfinite(iso["relative_variance_step"]) and iso["xi"] == 0


def test_minimal_sigma_w_zero_is_regular():
    st = mf.step_moments("minimal", sigma_w=0.0)
    assert st["m1"] == pytest.approx(st["E_a2"]) and math.isfinite(st["relative_variance"])


# -------------------------------------------------------------------------------------------- command line
def test_cli_spectrum_T_1000_json_is_finite(capsys):
    rc, out, err = run_cli(capsys, "spectrum", "vanilla", "--T", "1000", "--sigma-w", "1.1", "--json")
    assert rc == 0, err

    def refuse(c):
        raise AssertionError(f"non-JSON constant {c}")
    r = json.loads(out, parse_constant=refuse)
    assert r["mean"] is None and r["variance"] is None  # below the float range: log form
    assert r["log_mean"] == pytest.approx(1000 * math.log(r["chi"]), rel=1e-13)
    assert math.isfinite(r["relative_variance_independent"])
    assert r["relative_variance"] == pytest.approx(1000 * r["relative_variance_step"], rel=1e-13)


def test_cli_spectrum_T_1e12_fast(capsys):
    t0 = time.perf_counter()
    rc, out, err = run_cli(capsys, "spectrum", "vanilla", "--T", "1e12", "--json")
    assert rc == 0, err
    assert time.perf_counter() - t0 < 10
    r = json.loads(out)
    assert r["T"] == 10 ** 12 and math.isfinite(r["log_mean"])
    rc, out, err = run_cli(capsys, "spectrum", "vanilla", "--T", "1e12")  # text output: no nan, no inf
    assert rc == 0, err
    assert "nan" not in out.lower() and " inf " not in out


def test_cli_spectrum_sigma_w_zero(capsys):
    rc, out, err = run_cli(capsys, "spectrum", "vanilla", "--T", "5", "--sigma-w", "0", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["mean"] == 0 and r["log_mean"] is None and math.isfinite(r["relative_variance"])


# ------------------------------------------------------------------------------ sizes checked before allocating
def test_critical_scan_refuses_huge_variances_at_once():
    from mftrnn.theory import critical
    for kw in (dict(sigma_b=1e6), dict(sigma_w=1e6), dict(sigma_v=1e4)):
        t0 = time.perf_counter()
        with pytest.raises(mf.DomainError, match="too large for the scan"):
            critical.minimal_for_timescale(10, **kw)
        assert time.perf_counter() - t0 < 2
    with pytest.raises(mf.DomainError, match="too large for the scan"):
        critical.minimal_critical_mu_b(4.0, sigma_b=1e6)
    with pytest.raises(mf.DomainError, match="too large for the scan"):
        critical.minimal_mu_b_roots(1.0, 0.9, mu_b_range=(-1e9, 1e9))


def test_phase_diagram_grid_limit_before_allocating():
    from mftrnn.theory.phase_diagram import MAX_GRID_POINTS, compute_grid
    x = np.broadcast_to(np.array(0.5), (MAX_GRID_POINTS + 1,))  # a view: no memory
    with pytest.raises(mf.DomainError, match="too large"):
        compute_grid("vanilla", "sigma_w", x, "mu_b", np.array([0.0]), {"sigma_v": 1.0, "sigma_b": 0.0, "R": 1.0},
                     progress=False)


# ---------------------------------------------------------------------------------------- JSON-ready results
def test_critical_rnn_init_is_json_ready():
    torch = pytest.importorskip("torch")
    from mftrnn.nets.init import critical_rnn_init_
    hp = critical_rnn_init_(torch.nn.RNN(4, 8, num_layers=2), q_star=1.0, generator=torch.Generator().manual_seed(0))
    assert hp["xi"] is None and all(layer["xi"] is None for layer in hp["layers"])  # chi = 1: infinite timescale
    json.dumps(hp, allow_nan=False)
    hp = critical_rnn_init_(torch.nn.RNNCell(4, 8), sigma_w=3.0, sigma_v=1.0)  # chi > 1
    assert hp["xi"] is None
    json.dumps(hp, allow_nan=False)
