"""Tests of the trainability check: ``mftrnn.nets.diagnose.diagnose`` and ``mftrnn diagnose`` (``mftrnn.cli.diagnose``).

Independent references: the hyperparameters an initialiser set (and PyTorch's documented default distribution,
through ``pytorch_rnn_default_hyperparameters``); ``mftrnn.fixed_point`` at given values; the library's own
finite-width simulator ``measure_gated_chi`` (separate code, own weight draws); the mean field where tied networks
follow it (vanilla RNN at N >= 500, gated cells with small recurrent variances).
"""
from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

import mftrnn
from mftrnn.cli.app import CliError
from mftrnn.cli.diagnose import add_parser, cmd_diagnose
from mftrnn.nets.diagnose import (Diagnosis, diagnose, format_power, squared_singular_spread, verdict,
                                  VERDICT_MARGINAL)
from mftrnn.nets.gated import derived_module, init_gated_
from mftrnn.nets.init import critical_rnn_init_, pytorch_rnn_default_hyperparameters
from mftrnn.nets.simulate_gated import measure_gated_chi

torch.set_num_threads(1)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- estimated hyperparameters
def _se_sigma(sigma, count):
    """Standard error of sigma estimated as sqrt(mean(x^2)) from ``count`` i.i.d. N(0, sigma^2) entries:
    Var(mean x^2) = 2 sigma^4 / count, so SE(sigma) = sigma / sqrt(2 count) (delta method)."""
    return sigma / math.sqrt(2 * count)


def test_estimates_match_init_gated_lstm():
    N, N_in = 256, 64
    lstm = torch.nn.LSTM(N_in, N)
    set_ = init_gated_(lstm, generator=_gen(1), sigma_w=0.8, sigma_v=1.2, sigma_b=0.3, mu_b=0.5, mu_b_f=2.0,
                       sigma_w_g=1.4)
    d = diagnose(lstm, 100, measure=False)
    (layer,) = d.layers
    assert layer.N == N and layer.N_in == N_in and layer.R == 1.0
    for K, true in set_.items():
        est = layer.gates[K]
        # 5 standard errors (N^2, N N_in and N samples): a false failure has probability ~1e-6 per check
        assert abs(est["sigma_w"] - true["sigma_w"]) < 5 * _se_sigma(true["sigma_w"], N * N), K
        assert abs(est["sigma_v"] - true["sigma_v"]) < 5 * _se_sigma(true["sigma_v"], N * N_in), K
        assert abs(est["sigma_b"] - true["sigma_b"]) < 5 * _se_sigma(true["sigma_b"], N), K
        assert abs(est["mu_b"] - true["mu_b"]) < 5 * true["sigma_b"] / math.sqrt(N), K
        assert est["orthogonal"] is False
        # i.i.d. square matrix: squared singular values spread like Marchenko-Pastur at ratio 1 (relative std 1)
        assert 0.85 < est["sv2_spread"] < 1.15


def test_orthogonal_weights_are_recognised_and_read_exactly():
    N = 200
    gru = torch.nn.GRU(30, N)
    init_gated_(gru, orthogonal=True, generator=_gen(2), sigma_w=0.7, sigma_w_z=0.2, sigma_v=1.0)
    layer = diagnose(gru, 10, measure=False).layers[0]
    for K, sw in (("r", 0.7), ("z", 0.2), ("n", 0.7)):
        # sigma O: |W|_F^2 = N sigma^2 exactly (float32 rounding only)
        assert layer.gates[K]["sigma_w"] == pytest.approx(sw, rel=1e-5)
        assert layer.gates[K]["orthogonal"] is True and layer.gates[K]["sv2_spread"] < 1e-4
    assert layer.orthogonal is True


def test_default_pytorch_init_sums_both_biases():
    # PyTorch draws every weight and both biases from U(-1/sqrt N, 1/sqrt N): sigma_w^2 = 1/3 per gate,
    # sigma_v^2 = N_in/(3N), sigma_b^2 = 2/(3N) for b_ih + b_hh (pytorch_rnn_default_hyperparameters, derived there)
    torch.manual_seed(0)
    N, N_in = 512, 64
    lstm = torch.nn.LSTM(N_in, N)
    ref = pytorch_rnn_default_hyperparameters(N_in, N)
    layer = diagnose(lstm, 1000, measure=False).layers[0]
    for K, est in layer.gates.items():
        # relative SE of mean(x^2) for U(-a, a): sqrt(Var(x^2))/E[x^2]/sqrt(n) = sqrt(4/5)/sqrt(n); for the sum of two
        # uniforms sqrt(1.4/n) (E b^4 = (2/5 + 2/3) a^4); 4 SE
        assert est["sigma_w"] ** 2 == pytest.approx(ref["sigma_w"] ** 2, rel=4 * math.sqrt(0.8 / N ** 2))
        assert est["sigma_v"] ** 2 == pytest.approx(ref["sigma_v"] ** 2, rel=4 * math.sqrt(0.8 / (N * N_in)))
        # with only bias_ih the estimate would be half of this: 2/(3N) vs 1/(3N), far outside 4 SE = 21%
        assert est["sigma_b"] ** 2 == pytest.approx(ref["sigma_b"] ** 2, rel=4 * math.sqrt(1.4 / N))
        assert abs(est["mu_b"]) < 4 * ref["sigma_b"] / math.sqrt(N)


def test_gru_candidate_bias_follows_the_cell_description():
    """b_hr, b_hz add to b_ir, b_iz; b_hn sits inside the reset product and is reported, not added."""
    N = 16
    gru = torch.nn.GRU(4, N)
    with torch.no_grad():
        gru.bias_ih_l0.fill_(0.3)
        gru.bias_hh_l0.fill_(0.2)
    layer = diagnose(gru, 5, measure=False).layers[0]
    for K in "rz":
        assert layer.gates[K]["mu_b"] == pytest.approx(0.5, abs=1e-6) and layer.gates[K]["sigma_b"] < 1e-6
        assert "b_hh_rms" not in layer.gates[K]
    assert layer.gates["n"]["mu_b"] == pytest.approx(0.3, abs=1e-6)
    assert layer.gates["n"]["b_hh_rms"] == pytest.approx(0.2, abs=1e-6)
    assert any("bias_hh" in note for note in layer.notes)


def test_squared_singular_spread():
    g = _gen(3)
    O = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))[0]
    assert squared_singular_spread(2.5 * O) < 1e-12
    # diag(1, 3): s^2 = 1, 9 -> mean 5, std 4 -> 0.8 (by hand)
    assert squared_singular_spread(torch.diag(torch.tensor([1.0, 3.0]))) == pytest.approx(0.8, rel=1e-12)
    assert squared_singular_spread(torch.zeros(4, 4)) == 0.0


# --------------------------------------------------------------------------- the theory at the estimates
def test_theory_is_fixed_point_at_the_estimates_and_near_the_initialisers_values():
    N, N_in = 256, 64
    lstm = torch.nn.LSTM(N_in, N)
    set_ = init_gated_(lstm, generator=_gen(4), sigma_w=0.5, sigma_v=1.0, sigma_b=0.3, mu_b_f=2.0)
    layer = diagnose(lstm, 50, measure=False).layers[0]
    fp = mftrnn.fixed_point("lstm", **layer.hyperparameters)
    assert layer.chi == pytest.approx(float(fp.chi), rel=1e-12)
    assert layer.Q_star == pytest.approx(float(fp.Q_star), rel=1e-12)
    assert layer.xi == pytest.approx(float(fp.xi), rel=1e-12)
    assert layer.log_chi_T == pytest.approx(-50 / float(fp.xi), rel=1e-12)
    true = {f"{k}_{K}": v for K, d in set_.items() for k, v in d.items()}
    fp_true = mftrnn.fixed_point("lstm", R=1.0, **true)
    # estimation error: mu_b_f is known to SE sigma_b/sqrt(N) = 0.019 and dchi/dmu_f < 0.3 here; sigma_b to 4.4%;
    # the rest to < 1%: |chi_est - chi_true| of a few 1e-3, 0.02 is > 3 such errors
    assert layer.chi == pytest.approx(float(fp_true.chi), abs=0.02)


def test_critical_vanilla_init_reads_as_critical():
    N = 512
    rnn = torch.nn.RNN(N, N)
    chosen = critical_rnn_init_(rnn, q_star=0.5, orthogonal=True, generator=_gen(5))
    assert chosen["chi"] == pytest.approx(1.0, abs=1e-9)
    d = diagnose(rnn, 50, measure=False)
    layer = d.layers[0]
    assert layer.orthogonal is True
    assert layer.gates["u"]["sigma_w"] == pytest.approx(chosen["sigma_w"], rel=1e-5)   # sigma O: exact
    # sigma_v^2 is estimated from N^2 entries (relative SE sqrt(2)/N = 0.3%), moving q* by < 0.3% and chi by
    # less: |chi - 1| < 0.01 is > 3 SE
    assert layer.chi == pytest.approx(1.0, abs=0.01)
    assert d.verdict_kind == "trainable"
    ref = mftrnn.product_moments("vanilla", 50, orthogonal=True, **layer.hyperparameters)
    assert layer.spectrum["log_mean"] == pytest.approx(ref["log_mean"], rel=1e-12, abs=1e-12)
    assert "orthogonal" in layer.spectrum["source"]


# --------------------------------------------------------------------------- measured on the module
def _close(measured, theory, se):
    # 3 standard errors (over sequences) plus 2% for the finite width / tied weights: measured on nn.RNN at
    # N = 500 and 1000 (6 hyperparameter sets, chi from 0.11 to 1.55) the deviation was at most 0.9% of chi,
    # and on nn.LSTM/nn.GRU at N = 256 with sigma_w = 0.1 at most 0.8%
    return abs(measured - theory) <= 3 * se + 0.02 * theory


@pytest.mark.parametrize("sigma_w,sigma_v,orthogonal", [(1.5, 0.5, False), (2.5, 0.5, False), (1.0, 1.0, True)])
def test_measured_chi_follows_theory_for_a_wide_vanilla_rnn(sigma_w, sigma_v, orthogonal):
    N = 500
    rnn = torch.nn.RNN(N, N)
    critical_rnn_init_(rnn, sigma_w=sigma_w, sigma_v=sigma_v, orthogonal=orthogonal, generator=_gen(6))
    d = diagnose(rnn, 100, max_steps=100, burn_in=100, seed=1)
    layer = d.layers[0]
    m = layer.measured
    assert _close(m["chi"], layer.chi, m["chi_se"]), (m["chi"], m["chi_se"], layer.chi)
    assert m["Q"] == pytest.approx(layer.Q_star, rel=0.02)
    # the 100-step mean squared singular value: a 2% + 3 SE error in chi is ~100 * 0.03 in the log; probes add ~1
    assert abs(m["log_msv"] - m["predicted_log_mean"]) <= 100 * (0.02 + 3 * m["chi_se"] / layer.chi) + 1.0


@pytest.mark.parametrize("cls,hp", [(torch.nn.LSTM, dict(mu_b_f=2.0)), (torch.nn.GRU, dict(mu_b_z=2.0))])
def test_measured_chi_follows_theory_for_small_recurrent_variances(cls, hp):
    N = 256
    module = cls(N, N)
    init_gated_(module, generator=_gen(7), sigma_w=0.1, sigma_v=1.0, **hp)
    layer = diagnose(module, 100, max_steps=100, burn_in=100).layers[0]
    m = layer.measured
    assert _close(m["chi"], layer.chi, m["chi_se"]), (m["chi"], m["chi_se"], layer.chi)


def test_measurement_agrees_with_the_independent_simulator_where_tied_weights_depart_from_theory():
    """At PyTorch's sigma_w^2 = 1/3 the tied LSTM's chi is ~45% above the untied mean field; diagnose's measurement
    on an nn.LSTM must reproduce measure_gated_chi(tied=True) (separate code, its own weight draws)."""
    N, N_in = 128, 32
    hp = dict(sigma_w=3 ** -0.5, sigma_v=(N_in / (3 * N)) ** 0.5, sigma_b=(2 / (3 * N)) ** 0.5, mu_b=0.0)
    lstm = torch.nn.LSTM(N_in, N)
    init_gated_(lstm, generator=_gen(8), **hp)
    layer = diagnose(lstm, 1000, max_steps=120, burn_in=100).layers[0]
    ref = measure_gated_chi("lstm", N=N, N_in=N_in, T=120, burn_in=100, tied=True, n_networks=2, seed=3, **hp)
    # network-to-network spread of chi at N = 128 is ~0.5%; 3% covers it with room
    assert layer.measured["chi"] == pytest.approx(ref["chi"], rel=0.03)
    assert layer.measured["chi"] > 1.2 * layer.chi          # the documented tied-weight departure
    assert layer.verdict_kind == "vanish" and layer.measured["verdict_kind"] == "vanish"


def test_default_lstm_at_T_1000_vanishes():
    torch.manual_seed(1)
    d = diagnose(torch.nn.LSTM(32, 128), 1000, measure=False)
    assert d.verdict_kind == "vanish"
    assert d.verdict.startswith("xi = ") and "<< T = 1000" in d.verdict
    layer = d.layers[0]
    assert layer.chi < 0.4 and layer.log_chi_T < -VERDICT_MARGINAL
    assert "vanish" in str(d) and "assumptions" in str(d)
    json.dumps(d.to_dict(), allow_nan=False)


def test_stacked_bidirectional_layers():
    torch.manual_seed(2)
    gru = torch.nn.GRU(8, 24, num_layers=2, bidirectional=True)
    d = diagnose(gru, 30, R=0.5, max_steps=20, burn_in=20)
    assert [(L.layer, L.direction) for L in d.layers] == [(0, "forward"), (0, "reverse"), (1, "forward"),
                                                           (1, "reverse")]
    assert d.layers[0].R == 0.5 and d.layers[2].N_in == 48
    assert d.layers[2].R == pytest.approx((d.layers[0].Q_star + d.layers[1].Q_star) / 2, rel=1e-12)
    assert d.layers[2].R_source.startswith("Q* of layer 0")
    pick = max(d.layers, key=lambda L: L.chi)
    assert d.verdict == pick.verdict and d.verdict_layer == pick.name
    # the measured input of layer 1 is layer 0's states (second moment near Q*, not the Gaussian R = 0.5)
    assert d.layers[2].measured["R_in"] < 0.2


@pytest.mark.parametrize("make", [
    lambda: torch.nn.RNNCell(6, 20), lambda: torch.nn.LSTMCell(6, 20), lambda: torch.nn.GRUCell(6, 20),
    lambda: mftrnn.nets.nn.VanillaRNNCell(6, 20), lambda: mftrnn.nets.nn.MinimalRNNCell(20),
    lambda: mftrnn.nets.layers.MinimalRNN(6, 20, num_layers=2), lambda: derived_module("gru-reset-before", 6, 20),
    lambda: derived_module("vanilla", 6, 20, 2), lambda: torch.nn.LSTM(6, 20, bias=False)])
def test_every_supported_module_gives_a_json_safe_report(make):
    torch.manual_seed(3)
    d = diagnose(make(), 40, max_steps=10, burn_in=5, n_sequences=2, n_probes=2)
    assert isinstance(d, Diagnosis) and d.layers
    out = d.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["verdict_kind"] in ("trainable", "marginal", "vanish", "chaotic")
    for L in d.layers:
        assert math.isfinite(L.measured["chi"]) and L.measured["steps"] == 10


@pytest.mark.parametrize("module,match", [
    (torch.nn.Linear(3, 3), "does not support Linear"),
    (torch.nn.RNN(3, 4, nonlinearity="relu"), "tanh"),
    (torch.nn.LSTM(3, 4, proj_size=2), "proj_size"),
    ("not a module", "torch.nn.Module"),
])
def test_unsupported_modules(module, match):
    with pytest.raises(mftrnn.MftrnnError, match=match):
        diagnose(module, 10, measure=False)


@pytest.mark.parametrize("kw", [dict(T=0), dict(T=2.5), dict(T=True), dict(T="10"), dict(T=10, R=-1.0),
                                dict(T=10, R=float("nan")), dict(T=10, max_steps=1), dict(T=10, n_probes=0),
                                dict(T=10, measure="yes"), dict(T=10, settle=10)])
def test_bad_arguments(kw):
    with pytest.raises(mftrnn.DomainError):
        diagnose(torch.nn.GRU(3, 4), **kw)


# --------------------------------------------------------------------------- verdicts
def test_verdict_thresholds():
    T = 1000
    # chi = exp(-1/xi): the kind follows T/xi (module docstring)
    for xi, kind in ((2000.0, "trainable"), (1000.0, "trainable"), (999.0, "marginal"), (1000 / 6, "marginal"),
                     (1000 / 6.01, "vanish"), (12.0, "vanish")):
        assert verdict(math.exp(-1 / xi), T, xi)[0] == kind, xi
    assert verdict(math.exp(0.5 / T), T)[0] == "trainable"
    assert verdict(math.exp(3 / T), T)[0] == "marginal"
    assert verdict(1.3, T)[0] == "chaotic"
    assert verdict(1.0, T)[0] == "trainable" and verdict(0.0, T)[0] == "vanish"
    kind, text = verdict(math.exp(-1 / 12), T, 12.0)
    # chi^T = exp(-1000/12) = 10^-36.1912 = 6.44e-37 (1000/12 = 83.333, / ln 10 = 36.1912, 10^0.8088 = 6.44)
    assert text == "xi = 12 << T = 1000: gradients from the start of the sequence vanish as chi^T = 6.4e-37"


def test_format_power():
    assert format_power(math.log(1e-36)) == "1e-36"
    assert format_power(math.log(2.5) - 1000 * math.log(10)) == "2.5e-1000"
    assert format_power(math.log(0.61)) == "0.61"
    assert format_power(-math.inf) == "0"


# --------------------------------------------------------------------------- the command line
def _args(*argv):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["diagnose", *argv])


def test_state_dict_round_trip_through_the_cli(tmp_path, capsys):
    torch.manual_seed(4)
    gru = torch.nn.GRU(8, 32, num_layers=2, bidirectional=True)
    path = tmp_path / "gru.pt"
    torch.save(gru.state_dict(), path)
    assert cmd_diagnose(_args(str(path), "--T", "200", "--json", "--no-measure", "--R", "0.7")) == 0
    out = json.loads(capsys.readouterr().out)
    ref = diagnose(gru, 200, R=0.7, measure=False)
    assert out["loaded_as"].startswith("nn.GRU(input_size=8, hidden_size=32, num_layers=2, bidirectional=True")
    assert [L["chi"] for L in out["layers"]] == pytest.approx([L.chi for L in ref.layers], rel=1e-12)
    assert out["verdict"] == ref.verdict and out["T"] == 200


def test_checkpoint_with_a_nested_state_dict_and_prefix(tmp_path, capsys):
    torch.manual_seed(5)
    rnn = torch.nn.RNN(6, 40)
    model = {f"rnn.{k}": v for k, v in rnn.state_dict().items()} | {"embed.weight": torch.zeros(5, 6)}
    path = tmp_path / "ck.pt"
    torch.save({"model": model, "step": 7}, path)
    assert cmd_diagnose(_args(str(path), "--T", "20", "--max-steps", "10", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cell"] == "vanilla" and out["assumed"] == ["nonlinearity tanh (a state_dict does not record it)"]
    assert out["layers"][0]["chi"] == pytest.approx(diagnose(rnn, 20, measure=False).layers[0].chi, rel=1e-12)
    # two recurrent modules: --prefix chooses
    torch.save({"a.weight_ih_l0": rnn.weight_ih_l0, "a.weight_hh_l0": rnn.weight_hh_l0,
                "b.weight_ih_l0": rnn.weight_ih_l0, "b.weight_hh_l0": rnn.weight_hh_l0}, path)
    with pytest.raises(CliError, match="--prefix"):
        cmd_diagnose(_args(str(path), "--T", "5", "--no-measure"))
    assert cmd_diagnose(_args(str(path), "--T", "5", "--no-measure", "--prefix", "b.")) == 0
    assert "nn.RNN(input_size=6, hidden_size=40" in capsys.readouterr().out


def test_whole_module_needs_trust_and_cell_state_dicts_need_cell(tmp_path, capsys):
    torch.manual_seed(6)
    path = tmp_path / "m.pt"
    torch.save(torch.nn.LSTM(3, 8), path)
    with pytest.raises(CliError, match="--trust"):
        cmd_diagnose(_args(str(path), "--T", "5"))
    assert cmd_diagnose(_args(str(path), "--T", "5", "--no-measure", "--trust")) == 0
    assert "a whole module" in capsys.readouterr().out
    der = derived_module("gru-reset-before", 4, 12)
    torch.save(der.state_dict(), path)
    with pytest.raises(CliError, match="--cell"):
        cmd_diagnose(_args(str(path), "--T", "5", "--no-measure"))
    assert cmd_diagnose(_args(str(path), "--T", "5", "--no-measure", "--json", "--cell", "gru-reset-before",
                              "--hidden", "12", "--input", "4")) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layers"][0]["chi"] == pytest.approx(diagnose(der, 5, measure=False).layers[0].chi, rel=1e-12)


def _write(tmp_path, obj, name="x.pt"):
    path = tmp_path / name
    if isinstance(obj, bytes):
        path.write_bytes(obj)
    else:
        torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("content,extra,match", [
    (None, [], "no such file"),
    (b"not a torch file at all", [], "not a torch file"),
    (b"", [], "not a torch file"),
    ({"foo.bar": torch.zeros(3)}, [], "cannot recognise"),
    ({"weight_ih_l0": torch.zeros(8, 3), "weight_hh_l0": torch.zeros(8, 4)}, [], "4N is an LSTM"),
    ({"weight_ih_l0": torch.zeros(16, 3), "weight_hh_l0": torch.zeros(16, 4), "surprise": torch.zeros(2)}, [],
     "unknown keys surprise"),
    ({"weight_ih_l0": torch.zeros(16, 3), "weight_hh_l0": torch.full((16, 4), float("nan"))}, [], "non-finite"),
    ({"weight_ih_l0": torch.zeros(16, 3), "weight_hh_l0": torch.zeros(16, 4), "weight_hr_l0": torch.zeros(4, 2)},
     [], "proj_size"),
    ({"a": 1}, [], "without tensors"),
    ([1, 2], [], "holds a list"),
    ({"weight_ih_l0": torch.zeros(4, 3), "weight_hh_l0": torch.zeros(4, 4)}, ["--T", "0"], "--T must be"),
    ({"weight_ih_l0": torch.zeros(4, 3), "weight_hh_l0": torch.zeros(4, 4)}, ["--T", "abc"], "--T must be"),
    ({"weight_ih_l0": torch.zeros(4, 3), "weight_hh_l0": torch.zeros(4, 4)}, ["--R", "-1"], "--R must be"),
    ({"weight_ih_l0": torch.zeros(4, 3), "weight_hh_l0": torch.zeros(4, 4)}, ["--hidden", "4"], "go with --cell"),
    ({"w": torch.zeros(4, 3)}, ["--cell", "gru"], "needs --hidden"),
    ({"w": torch.zeros(4, 3)}, ["--cell", "gru", "--hidden", "4", "--input", "x"], "--input must be"),
    ({"w": torch.zeros(4, 3)}, ["--cell", "gru", "--hidden", "4", "--input", "3"], "does not fit cell"),
])
def test_bad_input_is_one_clear_error(tmp_path, content, extra, match):
    path = str(tmp_path / "missing.pt") if content is None else _write(tmp_path, content)
    argv = [path] + (extra if "--T" in extra else ["--T", "5"] + extra) + ["--no-measure"]
    with pytest.raises(CliError, match=match) as info:
        cmd_diagnose(_args(*argv))
    assert "\n" not in str(info.value)


def test_unknown_cell_is_an_mftrnn_error(tmp_path):
    path = _write(tmp_path, {"w": torch.zeros(2)})
    with pytest.raises(mftrnn.MftrnnError):
        cmd_diagnose(_args(path, "--T", "5", "--cell", "nonsense", "--hidden", "2", "--input", "2"))
