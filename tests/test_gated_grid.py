"""The batched gated engine (mftrnn.theory.gated_grid) against the scalar engine (mftrnn.theory.gated._point).

Tolerance 1e-8: relative in Q* and Qc*, absolute in chi (chi is O(1)). Both engines resolve E[tanh^2 c] to 1e-10
(pairs of grids) and chi to 1e-9 (two grids), so they must agree to about that; measured agreement is 1e-13 to
1e-9. The pieces of the batched engine's speed-ups (truncation weight, degree of psi, the secular iteration) are
checked against independent computations (adaptive quadrature, direct evaluation, polynomial roots). The scalar
engine's law-cell chi_q (an eigen-analysis the batched engine does not do) is switched off in the
scalar reference to keep this file fast; the batched engine reports it as None (not computed).
"""
import numpy as np
import pytest

import mftrnn as mf
from mftrnn.cells.gated import gate_hyperparameters
from mftrnn.cells.registry import get_cell
from mftrnn.theory import gated as tg
from mftrnn.theory import gated_grid as gg

TOL = 1e-8


@pytest.fixture
def no_law_chi_q(monkeypatch):
    monkeypatch.setattr(tg, "_law_chi_q_checked", lambda *a, **k: float("nan"))


def _scalar(cell, kw, i):
    c = get_cell(cell)
    one = {k: (np.ravel(v)[i] if np.ndim(v) else v) for k, v in kw.items()}
    hp, R = gate_hyperparameters(c, one)
    h = {g: {k: float(v) for k, v in d.items()} for g, d in hp.items()}
    return tg._point(tg.analyse(c), h, float(R), "exact")


def _check(cell, kw, fp, i):
    st = tg.analyse(get_cell(cell))
    ref = _scalar(cell, kw, i)
    assert np.ravel(fp.Q_star)[i] == pytest.approx(ref["Qs"][st.output], rel=TOL)
    if fp.Qc_star is not None:
        assert np.ravel(fp.Qc_star)[i] == pytest.approx(ref["Qs"][st.carried_new], rel=TOL)
    assert np.ravel(fp.chi)[i] == pytest.approx(ref["chi"], abs=TOL)


def test_lstm_regimes_against_scalar(no_law_chi_q):
    """Ordered (small sigma_w, negative forget bias), near-critical (chi ~ 1), long memory (mu_b_f = 7: S < 24),
    and a non-zero cell-state mean (mu_b_g != 0: the centred, complex path). (A wide heavy-tailed law, e.g.
    sigma_w = 2, mu_b_f = 6.5, where the scalar engine's interval falls back to [0, 24] and its grid climbs to 321
    points, agrees too, but costs the scalar engine ~20 s; it is checked by the benchmark's subsample; a widened
    interval of the batched engine is checked below.)"""
    kw = dict(sigma_w=np.array([0.4, 2.6, 0.3, 1.2]), sigma_v=np.array([1.0, 1.0, 1.0, 0.8]),
              mu_b_f=np.array([-1.0, 3.5, 7.0, 1.0]), mu_b_g=np.array([0.0, 0.0, 0.0, 0.7]))
    fp = tg.gated_fixed_point("lstm", **kw)
    assert abs(fp.chi[1] - 1) < 0.05 and fp.M_star[3] > 0.3
    for i in range(4):
        _check("lstm", kw, fp, i)
    assert fp.chi_q is None and fp.xi_q is None  # not computed by the batched engine (documented)


def test_gru_against_scalar():
    """Closed cells go through the scalar loop inside the batched entry point: the same numbers."""
    kw = dict(sigma_w=np.array([0.8, 2.5]), mu_b_z=np.array([0.0, 3.0]))
    fp = tg.gated_fixed_point("gru", **kw)
    for i in range(2):
        st = tg.analyse(get_cell("gru"))
        ref = _scalar("gru", kw, i)
        assert fp.Q_star[i] == ref["Qs"][st.output] and fp.chi[i] == ref["chi"]


def test_shapes_and_broadcasting(no_law_chi_q):
    """A (2, 1) x (1, 3) grid gives (2, 3) arrays in every field; an entry equals the scalar engine's."""
    kw = dict(sigma_w=np.array([[0.5], [1.5]]), mu_b_f=np.array([[0.0, 1.0, 2.0]]))
    fp = mf.fixed_point("lstm", **kw)
    for name in ("Q_star", "Qc_star", "M_star", "chi", "xi", "law_error", "multistable"):
        assert np.shape(getattr(fp, name)) == (2, 3), name
    assert all(np.shape(v) == (2, 3) for v in fp.q_stars.values())
    full = {k: np.broadcast_to(v, (2, 3)) for k, v in kw.items()}
    _check("lstm", full, fp, 5)
    # a flat 1-D array and a scalar along with it
    fp1 = mf.fixed_point("lstm", sigma_w=1.0, mu_b_f=np.array([0.0, 2.0]))
    assert fp1.Q_star.shape == (2,)


def test_refuses_unresolved_point(no_law_chi_q):
    """A forget-gate bias far beyond what the grids resolve (the scalar engine refuses it too) is refused with one
    line naming the point, not returned."""
    with pytest.raises(mf.ConvergenceError, match="forget-gate bias") as e:
        mf.fixed_point("lstm", sigma_w=0.3, mu_b_f=np.array([2.0, 25.0]))
    assert "mu_b_f=25" in str(e.value) and "\n" not in str(e.value)


def test_tables_exact():
    """The kernel tensor reproduces sum_k w_k L_l(x_j A_k) (the scalar engine's quadrature of the interpolant) for
    an arbitrary discrete law of A in [0, 1], to rounding."""
    from mftrnn.theory.perpetuity import chebyshev_grid
    M = 48
    rng = np.random.default_rng(0)
    A, w = rng.uniform(0, 1, 9), rng.uniform(0, 1, 9)
    tau = w @ gg._cheb_table(2 * A - 1, M)
    K = (tau @ gg._kernel_tensor(M)).reshape(M + 1, M + 1)
    g = chebyshev_grid(M, 1.0)
    ref = np.einsum("k,jkl->jl", w, g.interp(np.outer(g.s, A).ravel()).reshape(M + 1, 9, M + 1))
    assert np.abs(K - ref).max() < 1e-12


def test_widened_interval_against_scalar(no_law_chi_q):
    """A wide law whose phi has not decayed to 1e-11 on [0, 14/sigma_c] (sigma_w = 2.209, mu_b_f = 5.273): the
    batched engine widens the interval 1.5x (5.5 -> 8.5, where the weighted truncation check passes) where the
    scalar engine jumps to S = 24 with more points; the two must still agree to TOL (measured 2e-11 in Q*, 6e-13 in
    chi). Also checks that the interval did widen (the path under test), by recording the intervals evaluated."""
    kw = dict(sigma_w=np.array([2.209, 0.5]), sigma_v=1.0, mu_b_f=np.array([5.273, 0.0]))
    seen = []
    orig = gg._LawBatch.evaluate

    def record(self, idx, Q, M, S):
        seen.extend(float(s) for i, s in zip(idx, S) if i == 0)
        return orig(self, idx, Q, M, S)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(gg._LawBatch, "evaluate", record)
        fp = tg.gated_fixed_point("lstm", **kw)
    assert min(seen) < max(seen) < 24.0
    _check("lstm", {k: np.broadcast_to(v, (2,)) for k, v in kw.items()}, fp, 0)


def test_uncertified_chi_goes_to_scalar_engine(monkeypatch):
    """With the grids' chi agreement made impossible (tolerance 0), no batched value is returned: every point is
    handed to the scalar engine (a sentinel here)."""
    monkeypatch.setattr(gg, "_CHI_TOL", 0.0)
    handed = []

    def sentinel(st, h, R, closure, with_chi_q=True):
        handed.append(R)
        return {"chi": -1.0, "Qs": {st.output: -1.0, st.carried_new: -1.0}, "M": 0.0, "multistable": False,
                "mom": {f: (0.0, 1.0) for f in st.fields}, "chi_q": np.nan}
    monkeypatch.setattr(tg, "_point", sentinel)
    fp = tg.gated_fixed_point("lstm", sigma_w=np.array([0.5, 1.5, 2.5]), mu_b_f=np.array([0.0, 2.0, 4.0]))
    assert len(handed) == 3 and np.all(fp.chi == -1.0)


def test_tail_weight_against_quadrature():
    """W(S) = (1/pi) int_S^inf max(sech^2-hat, sech^4-hat) (the truncation weight) against adaptive quadrature
    (scipy.integrate.quad, rel 1e-12): the table's trapezoid (step 5e-4, a kink where the transforms cross at
    sqrt 2) is accurate to ~1e-8 relative; tolerance 1e-6."""
    from scipy.integrate import quad
    from mftrnn.theory.perpetuity import sech2_transform, sech4_transform
    f = lambda s: max(float(sech2_transform(s)), float(sech4_transform(s))) / np.pi
    for S in (0.0, 1.0, np.sqrt(2.0), 3.0, 6.0, 12.0, 24.0):
        ref = quad(f, S, 200.0, limit=400, epsabs=0.0, epsrel=1e-12, points=[np.sqrt(2.0)] if S < 1.5 else None)[0]
        assert float(gg._tail_weight(S)) == pytest.approx(ref, rel=1e-6), S


def test_psi_degree_resolves_the_exponential():
    """_nq(S) is the degree at which the Chebyshev interpolant in y on [0, 1] of exp(i S t y), |t| <= 1 (what psi
    expands), is exact to rounding: error below 1e-14 against direct evaluation at 2001 points."""
    from mftrnn.theory.perpetuity import chebyshev_grid
    y = np.linspace(0.0, 1.0, 2001)
    for S in (0.5, 2.0, 5.0, 12.0, 24.0):
        g = chebyshev_grid(gg._nq(S), 1.0)
        L = g.interp(y)
        for t in (-1.0, -0.37, 0.71, 1.0):
            assert np.abs(L @ np.exp(1j * S * t * g.s) - np.exp(1j * S * t * y)).max() < 1e-14, (S, t)


def test_secular_root_against_polynomial_roots():
    """The secular iteration on H(lam) = a1/(lam - rho) + a2/(lam - mu2) + b (a pole at rho and one below it, as
    P_w has): its root above rho is the largest real root of the cubic (lam - rho)(lam - mu2) f(lam) = 0, found
    independently by numpy.roots; agreement to 1e-12. Started from a guess off by 1e-2 (no slope), and from the
    root shifted by 1e-9 with the exact slope (the finer grid's path: two evaluations). A double pole at rho with
    f > 0 on both sides (no root above rho) returns rho to 2e-11."""
    rho = np.array([0.9, 0.5, 0.99, 0.7])
    mu2 = np.array([0.3, 0.1, 0.95, 0.6])
    a1, a2, b = np.array([0.05, 0.2, 1e-3, 0.01]), np.array([0.1, 0.3, 0.02, 0.05]), np.array([0.1, 0.3, 0.5, 0.2])
    rhoG = np.array([0.1, 0.05, 0.2, 0.3])
    H = lambda lam, sel: a1[sel] / (lam - rho[sel]) + a2[sel] / (lam - mu2[sel]) + b[sel]
    want = []
    for i in range(4):
        # lam (1 - b)(lam - rho)(lam - mu2) - lam (a1 (lam - mu2) + a2 (lam - rho)) - rhoG (lam - rho)(lam - mu2)
        p = np.poly1d([1.0, -rho[i]]) * np.poly1d([1.0, -mu2[i]])
        cubic = (np.poly1d([1 - b[i], 0.0]) * p - np.poly1d([1.0, 0.0]) * (a1[i] * np.poly1d([1.0, -mu2[i]])
                 + a2[i] * np.poly1d([1.0, -rho[i]])) - rhoG[i] * p)
        r = cubic.r
        want.append(max(r[np.isreal(r)].real))
    want = np.array(want)
    assert np.all(want > rho)
    got, slope = gg._secular_root(H, want * (1 + 1e-2), rho, rhoG, np.full(4, np.nan))
    assert np.abs(got - want).max() < 1e-12
    # f'(chi) = 1 - H - chi H' (exact), as the finer grid's first step uses
    d = 1 - H(want, np.ones(4, bool)) + want * (a1 / (want - rho) ** 2 + a2 / (want - mu2) ** 2)
    calls = []
    Hc = lambda lam, sel: (calls.append(1), H(lam, sel))[1]
    got2, _ = gg._secular_root(Hc, want + 1e-9, rho, rhoG, d)
    assert np.abs(got2 - want).max() < 1e-12 and len(calls) == 2
    assert np.all(np.isfinite(slope))
    # double pole: H = b - c/(lam - rho)^2, f = lam (1 - b + c/(lam - rho)^2) - rhoG > 0 for all lam > rho
    Hd = lambda lam, sel: 0.5 - 1e-3 / (lam - rho[sel]) ** 2
    got3, _ = gg._secular_root(Hd, rho + 1e-3, rho, rhoG, np.full(4, np.nan))
    assert np.all(np.abs(got3 - rho) <= 2e-11)
