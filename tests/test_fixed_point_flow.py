"""Results flow downstream: functions that need a fixed point accept a computed FixedPoint (and do not solve it
again), and given a cell and hyperparameters they solve it once."""
import numpy as np
import pytest

import mftrnn as mf
import mftrnn.theory.jacobian as jac
import mftrnn.theory.spectrum as spec


@pytest.fixture
def count(monkeypatch):
    calls = []

    def counting(cell, **kw):
        calls.append(cell)
        return mf.fixed_point(cell, **kw)

    monkeypatch.setattr(jac, "fixed_point", counting)
    monkeypatch.setattr(spec, "fixed_point", counting)
    return calls


def test_step_moments_from_fixed_point(count):
    fp = mf.fixed_point("minimal", sigma_w=2.0, mu_b=3.0)
    a = mf.step_moments(fp, orthogonal=True)
    assert count == []
    b = mf.step_moments("minimal", orthogonal=True, sigma_w=2.0, mu_b=3.0)
    assert len(count) == 1
    assert a["m2"] == b["m2"] and a["chi"] == fp.chi


def test_other_functions_accept_fixed_point(count):
    fp = mf.fixed_point("vanilla", sigma_w=1.3, sigma_v=0.4)
    assert mf.state_moments(fp)[2] == pytest.approx(fp.Q_star, rel=1e-12)
    assert mf.coefficient_moment(fp, 2, 0) == mf.coefficient_moment("vanilla", 2, 0, sigma_w=1.3, sigma_v=0.4)
    assert mf.product_moments(fp, 5)["mean"] == pytest.approx(fp.chi ** 5, rel=1e-12)
    law = mf.coefficient_law(fp)
    assert np.sum(law.weight) == pytest.approx(1.0)
    assert len(count) == 1  # only the call given a name


def test_spectral_density_solves_once(count):
    x = np.geomspace(0.05, 5, 7)
    spec._spectral_law.cache_clear()
    d = mf.spectral_density("vanilla", 3, x, orthogonal=True, sigma_w=1.1, sigma_v=0.3)
    assert len(count) == 1
    fp = mf.fixed_point("vanilla", sigma_w=1.1, sigma_v=0.3)
    spec._spectral_law.cache_clear()
    assert np.allclose(mf.spectral_density(fp, 3, x, orthogonal=True), d, rtol=1e-12, atol=0)


def test_fixed_point_and_hyperparameters_refused():
    fp = mf.fixed_point("vanilla")
    with pytest.raises(mf.DomainError, match="not both"):
        mf.step_moments(fp, sigma_w=2.0)


# ------------------------------------------------------------------ one FixedPoint for every cell, every pre-activation
def test_every_preactivation_variance_reported():
    """q_stars holds q_k = sigma_w^2 <y_k^2> + sigma_v^2 R + sigma_b^2 for every pre-activation (not only the first)."""
    import sympy as sp
    h, z, e1, e2, u = sp.symbols("h z e1 e2 u", real=True)
    u_expr = mf.sigmoid(e1)
    cell = mf.Cell("two-fields-test", h, z, (mf.Preactivation(e1), mf.Preactivation(e2, recurrent_input=h / 2)),
                   u_expr * h + (1 - u_expr) * sp.tanh(e2))
    fp = mf.fixed_point(cell, sigma_w=1.3, sigma_v=0.7, sigma_b=0.2, R=1.5)
    base = 0.7**2 * 1.5 + 0.2**2
    assert set(fp.q_stars) == {"e1", "e2"}
    np.testing.assert_allclose(fp.q_stars["e1"], 1.3**2 * fp.Q_star + base, rtol=1e-12)
    np.testing.assert_allclose(fp.q_stars["e2"], 1.3**2 * fp.Q_star / 4 + base, rtol=1e-12)
    assert fp.q_star == fp.q_stars["e1"]
    assert fp.to_dict()["q_stars"] == {"e1": float(fp.q_stars["e1"]), "e2": float(fp.q_stars["e2"])}


def test_gated_and_single_state_share_one_class():
    vanilla = mf.fixed_point("vanilla", sigma_w=1.2)
    lstm = mf.fixed_point("lstm", sigma_w=0.8)
    assert type(vanilla) is type(lstm) is mf.FixedPoint
    assert mf.GatedFixedPoint is mf.FixedPoint
    assert set(lstm.q_stars) == {"e_i", "e_f", "e_g", "e_o"} and lstm.q_star == lstm.q_stars["e_i"]
    assert lstm.Qc_star is not None and vanilla.Qc_star is None and 0 < lstm.chi_q < 1
    d = lstm.to_dict()
    assert d["chi_q"] == float(lstm.chi_q) and d["Qc_star"] == float(lstm.Qc_star)
    assert "chi_q" not in mf.fixed_point("lstm", sigma_w=0.8, closure="gaussian").to_dict()
