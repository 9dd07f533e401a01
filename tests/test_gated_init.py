"""Critical initialisation of nn.LSTM / nn.GRU (mftrnn.nets.gated_init, mftrnn.theory.critical_gated)."""
import math

import pytest
import torch

import mftrnn as mf
from mftrnn.errors import DomainError
from mftrnn.nets.gated_init import critical_gru_init_, critical_lstm_init_
from mftrnn.theory.critical_gated import gated_for_timescale, memory_gate

torch.set_num_threads(1)


def test_memory_gate_read_from_the_cell():
    assert memory_gate("lstm") == "f" and memory_gate("gru") == "z"


def test_gru_weights_have_the_chosen_statistics_and_layers_see_the_layer_below():
    N, T = 256, 40
    m = torch.nn.GRU(8, N, num_layers=2, bidirectional=True).double()
    out = critical_gru_init_(m, T, generator=torch.Generator().manual_seed(0))
    assert out["num_layers"] == 2 and out["xi"] == pytest.approx(T, rel=1e-6)
    assert out["layers"][1]["R"] == pytest.approx(out["layers"][0]["Q_star"])
    for l, hp in enumerate(out["layers"]):
        for d in ("", "_reverse"):
            W = getattr(m, f"weight_hh_l{l}{d}").chunk(3)
            V = getattr(m, f"weight_ih_l{l}{d}").chunk(3)
            b = (getattr(m, f"bias_ih_l{l}{d}") + getattr(m, f"bias_hh_l{l}{d}")).chunk(3)
            assert float(getattr(m, f"bias_hh_l{l}{d}").abs().max()) == 0.0
            for k, K in enumerate("rzn"):
                # std of N^2 Gaussian entries: relative standard error 1/sqrt(2 N^2) = 0.3%: 2% is ~7 of them
                assert float(W[k].std()) * math.sqrt(N) == pytest.approx(hp[f"sigma_w_{K}"], rel=0.02)
                assert float(b[k].mean()) == pytest.approx(hp[f"mu_b_{K}"], abs=1e-12)
            assert float(V[1].abs().max()) == 0.0  # the update gate ignores the input at initialisation


def test_initialised_gru_shows_the_predicted_chi():
    """Measured on the module itself (tied weights, mftrnn.diagnose: 4 sequences x 4 probes, N = 256): at
    sigma_w = 0.2 the real GRU follows the untied theory (measured 0.96724 +- 0.00004 vs 0.96722 at T = 30); the
    tolerance is 5 standard errors plus 3e-4 for the O(1/N) finite-width shift."""
    m = torch.nn.GRU(16, 256).double()
    out = critical_gru_init_(m, 30, generator=torch.Generator().manual_seed(0))
    meas = mf.diagnose(m, 30).to_dict()["layers"][0]["measured"]
    assert abs(meas["chi"] - out["chi"]) <= 5 * meas["chi_se"] + 3e-4


def test_lstm_cell_forget_gate_and_refusals():
    N = 128
    m = torch.nn.LSTMCell(4, N).double()
    out = critical_lstm_init_(m, 20, generator=torch.Generator().manual_seed(1))
    assert out["memory_gate"] == "f" and out["xi"] == pytest.approx(20, rel=1e-6)
    bf = (m.bias_ih + m.bias_hh).chunk(4)[1]
    assert float(bf.mean()) == pytest.approx(out["mu_b_f"], abs=1e-12) and out["mu_b_f"] > 2
    assert float(m.weight_ih.chunk(4)[1].abs().max()) == 0.0
    with pytest.raises(DomainError, match="critical_lstm_init_"):
        critical_lstm_init_(torch.nn.GRU(4, 8), 10)
    with pytest.raises(DomainError, match="critical_gru_init_"):
        critical_gru_init_(torch.nn.LSTM(4, 8), 10)
    for bad in (0, -3, 2.5, float("nan"), "x"):
        with pytest.raises(DomainError):
            gated_for_timescale("gru", bad)
    with pytest.raises(DomainError):
        gated_for_timescale("gru", 10**6)


def test_input_gate_read_from_the_cell():
    from mftrnn.theory.critical_gated import input_gate
    assert input_gate("lstm") == "i" and input_gate("gru") is None
