"""Property tests over *every* registered cell (the registry is read at run time, so a cell added later is covered):
``fixed_point`` returns finite numbers that respect the bounds every cell's theory guarantees, or raises a library
error (:class:`mftrnn.MftrnnError`), never a bare Python exception; the timescale is the one of its slope. (That the
fixed points satisfy their maps, recomputed by independent quadrature, is tested cell by cell in
``test_properties_gated.py`` and ``test_right_numbers.py``.)

The bounds used hold for every registered cell: ``Q* >= 0``, ``chi >= 0`` (a growth factor of a second moment),
``xi = -1/ln chi`` (infinite for ``chi >= 1``), the pre-activation variances ``q >= 0`` (gated cells: at least
their input and bias parts ``sigma_v^2 R + sigma_b^2``), and ``Q* <= 1`` where the output is a bounded (|.| <= 1)
function of the fields
(tanh readouts and convex combinations of tanh candidates). Deterministic; few examples per gated cell (seconds
each)."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import mftrnn as mf
from mftrnn.theory.fixed_point import unbounded
from mftrnn import MftrnnError
from mftrnn.cells.gated import GatedCell

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow],
                phases=[Phase.explicit, Phase.reuse, Phase.generate])

#: cells whose output is bounded by 1 in absolute value (tanh of something, or convex combinations of such starting
#: from 0): the output's second moment Q* <= 1
BOUNDED = {"vanilla", "lstm", "gru", "lstm-peephole", "gru-reset-before"}

hyper = st.fixed_dictionaries({
    "sigma_w": st.floats(0.0, 3.0), "sigma_v": st.floats(0.0, 2.0), "sigma_b": st.floats(0.0, 1.0),
    "mu_b": st.floats(-3.0, 4.0)})


def _check(cell, hp):
    try:
        fp = mf.fixed_point(cell, **hp)
    except MftrnnError:
        return None  # a clear refusal is allowed; anything else fails the test
    Q, chi, xi = float(fp.Q_star), float(fp.chi), fp.xi
    assert math.isfinite(Q) and Q >= 0
    assert math.isfinite(chi) and chi >= 0
    if chi >= 1:
        assert xi is None or not np.isfinite(xi)
    elif chi > 0:
        assert float(xi) == pytest.approx(-1.0 / math.log(chi), rel=1e-12)
    if cell in BOUNDED:
        assert Q <= 1.0 + 1e-12
    for name, q in fp.q_stars.items():
        assert float(q) >= -1e-15
    return fp


@pytest.mark.parametrize("cell", [c for c in mf.cells() if not isinstance(mf.get_cell(c), GatedCell)])
@settings(max_examples=30, **SETTINGS)
@given(hp=hyper)
def test_single_state_cells(cell, hp):
    fp = _check(cell, hp)
    if fp is not None and cell == "minimal":
        assert float(fp.Q_star) <= hp.get("R", 1.0) * (1 + 1e-12)  # a convex combination of h and the input


@pytest.mark.parametrize("cell", [c for c in mf.cells() if isinstance(mf.get_cell(c), GatedCell)])
@settings(max_examples=4, **SETTINGS)
@given(hp=hyper)
def test_gated_cells(cell, hp):
    fp = _check(cell, hp)
    if fp is None:
        return
    # the field variances have their input and bias parts (every field of these cells with an input term has
    # sigma_v^2 R, every biased one sigma_b^2)
    cellobj = mf.get_cell(cell)
    for f in cellobj.fields:
        floor = (hp["sigma_v"] ** 2 if f.input else 0.0) + (hp["sigma_b"] ** 2 if f.bias else 0.0)
        assert float(fp.q_stars[str(f.symbol)]) >= floor * (1 - 1e-12)


@pytest.mark.parametrize("cell", mf.cells())
def test_every_cell_at_its_defaults(cell):
    """The properties must be checked, not skipped by a refusal: at its default hyperparameters every registered
    cell returns a fixed point, except where the theory guarantees that none exists (``unbounded``: the linear RNN
    at its default sigma_w = 1, the edge chi = 1), which must then be refused with a clear error."""
    if not isinstance(mf.get_cell(cell), GatedCell) and bool(unbounded(cell)):
        with pytest.raises(MftrnnError):
            mf.fixed_point(cell)
        return
    assert _check(cell, {}) is not None
