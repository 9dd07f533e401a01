"""The batched gated engine (mftrnn.theory.gated_grid) against the scalar engine (mftrnn.theory.gated._point).

Tolerance 1e-8: relative in Q* and Qc*, absolute in chi (chi is O(1)). Both engines resolve E[tanh^2 c] to 1e-10
(pairs of grids) and chi to 1e-9 (two grids), so they must agree to about that; measured agreement is 1e-13 to
5e-10. The scalar engine's law-cell chi_q (an eigen-analysis the batched engine does not do) is switched off in the
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
    sigma_w = 2, mu_b_f = 6.5, where the interval falls back to [0, 24] and the grid climbs to 321 points, agrees
    to 2e-12 too, but costs the scalar engine ~20 s; it is checked by the benchmark's subsample.)"""
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
