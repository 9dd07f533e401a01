"""Convolutional gated RNNs (mftrnn.nets.conv) and the seizure-like task (mftrnn.experiments.seizure).

The module is derived from the same GatedCell as the dense DerivedCell; its mean field is the dense one with fan-in
C K (channels x kernel); the Monte Carlo of the module is compared with it (untied: the limit where it is exact) and
with the dense tied cell of width C K (tied: what the mapping claims for a real network)."""
import json
import math

import pytest
import torch
from torch.nn import functional as F

import mftrnn as mf
from mftrnn import cells, get_cell
from mftrnn.errors import DomainError, MftrnnError, UnknownCellError
from mftrnn.experiments import seizure as sz
from mftrnn.nets.conv import (ConvGatedCell, ConvGatedRNN, conv_term, critical_conv_init_, default_conv_init_,
                              init_conv_gated_, measure_conv)
from mftrnn.nets.gated import DerivedCell, DerivedRNN
from mftrnn.nets.simulate_gated import measure_gated_chi

torch.set_num_threads(1)
ALL = cells()  # every registered cell, single-state ones through Cell.as_gated
F64 = torch.float64


def _copy_dense_to_conv(dense, conv):
    """Dense (N, N) matrices -> kernels (N, N, 1)."""
    with torch.no_grad():
        for name, p in conv.named_parameters():
            q = dict(dense.named_parameters())[name]
            p.copy_(q[..., None] if p.dim() == 3 else q)


def _dyadic(*shape, gen):
    """Small multiples of 1/8: every product and sum of a few of them is exact in float64, in any order."""
    return torch.randint(-8, 9, shape, generator=gen).to(F64) / 8


# --------------------------------------------------------------------------- the module is the dense cell at K = L = 1
@pytest.mark.parametrize("name", ALL)
def test_conv_refuses_exactly_the_cells_the_dense_module_refuses(name):
    try:
        DerivedCell(get_cell(name), 4, 4)
    except DomainError as exc:
        with pytest.raises(DomainError) as ours:
            ConvGatedCell(name, 4, 4)
        assert str(ours.value) == str(exc)
    else:
        assert isinstance(ConvGatedCell(name, 4, 4), ConvGatedCell)


@pytest.mark.parametrize("name", ["lstm", "gru", "lstm-peephole", "gru-reset-before", "vanilla", "minimal"])
def test_k1_l1_equals_the_dense_derived_cell(name):
    """One step with dyadic weights, inputs and states (multiples of 1/8): every field W y + V x + b is then exact in
    float64 whatever the order of its sums, so the fields of the conv module (a matrix product over windows) and of
    DerivedCell (F.linear) must agree bit for bit where they read a state. The update is the same lambdified
    expression; torch evaluates sigmoid/tanh by a vectorised or a strided kernel depending on the memory layout, which
    may differ in the last bit: the new states agree to 4 units in the last place."""
    gen = torch.Generator().manual_seed(1)
    cell = ConvGatedCell(name, 6, 6, 1, dtype=F64).cell
    dense = DerivedCell(cell, 6, 6, dtype=F64)
    with torch.no_grad():
        for p in dense.parameters():
            p.copy_(_dyadic(*p.shape, gen=gen))
    conv = ConvGatedCell(cell, 6, 6, 1, dtype=F64)
    _copy_dense_to_conv(dense, conv)
    x = _dyadic(5, 6, gen=gen)
    state = tuple(_dyadic(5, 6, gen=gen) for _ in cell.states)
    env = dict(zip(cell.states, state))
    env[cell.input] = x
    conv_fields = conv.fields(x[..., None], tuple(s[..., None] for s in state))
    for f in cell.fields:
        env[f.symbol] = dense.field(f, env)
        if f.reads is None or f.reads in cell.states:
            assert torch.equal(env[f.symbol], conv_fields[f.symbol][..., 0]), f.symbol
        else:  # a gated product (sigmoid(e_r) h) is rounded before the sum
            assert float((env[f.symbol] - conv_fields[f.symbol][..., 0]).abs().max()) <= 1e-15
    with torch.no_grad():
        new = zip(dense(x, state), conv(x[..., None], tuple(s[..., None] for s in state)))
    for u, v in new:
        assert v.shape == (5, 6, 1)
        assert float((u - v[..., 0]).abs().max()) <= 4 * torch.finfo(F64).eps * max(1.0, float(u.abs().max()))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_sequence_k1_l1_equals_derived_rnn_and_the_fast_path_equals_stepping(name):
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    dense = DerivedRNN(get_cell(name), 3, 5, dtype=F64)
    conv = ConvGatedRNN(get_cell(name), 5, 3, 1, dtype=F64)
    _copy_dense_to_conv(dense.layers[0], conv.layers[0])
    x = torch.randn(12, 4, 3, generator=gen, dtype=F64)
    out_d, _ = dense(x)
    out_c, _ = conv(x[..., None])
    assert float((out_d - out_c[..., 0]).abs().max()) <= 1e-13  # 12 steps of float64 rounding
    # K = 3, L = 7, two layers, both paddings: ConvGatedRNN (input terms of all steps at once, fields grouped by what
    # they read) equals stepping ConvGatedCell, which evaluates each field through the same conv_term
    for padding in ("circular", "zeros"):
        rnn = ConvGatedRNN(name, 4, 2, 3, num_layers=2, padding=padding, dtype=F64)
        xs = torch.randn(9, 3, 2, 7, generator=gen, dtype=F64)
        out, final = rnn(xs)
        k = rnn.cell.new_states.index(rnn.cell.output)
        s, ys = [None, None], []
        for t in range(9):
            inp = xs[t]
            for l, layer in enumerate(rnn.layers):
                s[l] = layer(inp, s[l])
                inp = s[l][k]
            ys.append(inp)
        assert float((out - torch.stack(ys)).abs().max()) <= 1e-13
        for j, f in enumerate(final):  # the final state of every layer, in the cell's order
            for l in range(2):
                assert float((f[l] - s[l][j]).abs().max()) <= 1e-13


@pytest.mark.parametrize("padding", ["circular", "zeros"])
@pytest.mark.parametrize("L,K", [(8, 3), (5, 5), (3, 7), (1, 1)])
def test_conv_term_is_conv1d(padding, L, K):
    gen = torch.Generator().manual_seed(3)
    y = torch.randn(4, 3, L, generator=gen, dtype=F64)
    W = torch.randn(6, 3, K, generator=gen, dtype=F64)
    ref = (F.conv1d(F.pad(y, (K // 2, K // 2), mode="circular"), W) if padding == "circular"
           else F.conv1d(y, W, padding=K // 2))
    assert float((conv_term(y, W, padding) - ref).abs().max()) <= 1e-13


# --------------------------------------------------------------------------- initialisers
def test_gaussian_and_delta_orthogonal_kernels_have_the_stated_statistics():
    C, C_in, K = 64, 16, 3
    m = ConvGatedRNN("lstm", C, C_in, K, dtype=F64)
    hp = init_conv_gated_(m, sigma_w=1.3, sigma_v=0.7, sigma_b=0.2, mu_b=0.4, mu_b_f=2.0,
                          generator=torch.Generator().manual_seed(0))
    layer = m.layers[0]
    for g in "ifgo":
        W, V, b = (getattr(layer, f"{n}_{g}") for n in ("weight_hh", "weight_ih", "bias"))
        # std of n Gaussian entries: relative standard error 1/sqrt(2n) (0.64% for n = C*C*K): 4 of them
        assert float(W.std()) * math.sqrt(C * K) == pytest.approx(1.3, rel=4 / math.sqrt(2 * W.numel()))
        assert float(V.std()) * math.sqrt(C_in * K) == pytest.approx(0.7, rel=4 / math.sqrt(2 * V.numel()))
        assert abs(float(W.mean())) <= 4 * 1.3 / math.sqrt(C * K) / math.sqrt(W.numel())
        assert abs(float(b.mean()) - hp[g]["mu_b"]) <= 4 * 0.2 / math.sqrt(C)
    assert hp["f"]["mu_b"] == 2.0 and hp["i"]["mu_b"] == 0.4
    init_conv_gated_(m, kernel="delta-orthogonal", sigma_w=0.9, generator=torch.Generator().manual_seed(1))
    for g in "ifgo":
        W = getattr(layer, f"weight_hh_{g}")
        O = W[:, :, K // 2] / 0.9
        assert float((O @ O.T - torch.eye(C, dtype=F64)).abs().max()) <= 1e-12
        assert float((O.T @ O - torch.eye(C, dtype=F64)).abs().max()) <= 1e-12
        assert float(W[:, :, : K // 2].abs().max()) == 0.0 and float(W[:, :, K // 2 + 1:].abs().max()) == 0.0
        # each row of the kernel has squared norm sigma_w^2, as the Gaussian kernel's in expectation
        assert torch.allclose((W ** 2).sum(dim=(1, 2)), torch.full((C,), 0.81, dtype=F64), atol=1e-12)


@pytest.fixture(scope="module")
def critical_gru():
    """A two-layer ConvGRU (C = 64, K = 3, delta-orthogonal) critically initialised for T = 10, and the
    initialiser's return (two solves of the critical solver: a few seconds each)."""
    m = ConvGatedRNN("gru", 64, 64, 3, num_layers=2, dtype=F64)
    out = critical_conv_init_(m, 10, kernel="delta-orthogonal", generator=torch.Generator().manual_seed(0),
                              samples=2000)
    return m, out


def test_critical_init_sets_the_solvers_hyperparameters(critical_gru):
    m, out = critical_gru
    assert out["memory_gate"] == "z" and out["xi"] == pytest.approx(10, rel=1e-6)
    assert out["kernel"] == "delta-orthogonal" and out["fan_in"] == 64 and out["num_layers"] == 2
    assert out["layers"][1]["R"] == pytest.approx(out["layers"][0]["Q_star"])  # layer 2 reads layer 1's states
    for layer, hp in zip(m.layers, out["layers"]):
        assert float(layer.bias_z.min()) == float(layer.bias_z.max()) == pytest.approx(hp["mu_b_z"], abs=1e-12)
        assert float(layer.weight_ih_z.abs().max()) == 0.0  # the memory gate ignores the input
        for g in "rzn":
            O = getattr(layer, f"weight_hh_{g}")[:, :, 1] / hp[f"sigma_w_{g}"]
            assert float((O @ O.T - torch.eye(64, dtype=F64)).abs().max()) <= 1e-12
        assert float(layer.weight_ih_r.std()) * math.sqrt(64 * 3) == pytest.approx(hp["sigma_v_r"], rel=0.03)
    rnn = ConvGatedRNN("lstm", 16, 4, 3, num_layers=2, dtype=F64)
    bounds = default_conv_init_(rnn, torch.Generator().manual_seed(2))
    for name, p in rnn.named_parameters():
        assert float(p.abs().max()) <= bounds[name]
        # uniform on (-a, a): variance a^2 / 3, relative standard error of the variance ~ sqrt(0.8 / n): 4 of them
        assert float(p.var()) == pytest.approx(bounds[name] ** 2 / 3, rel=4 * math.sqrt(0.8 / p.numel()))
    assert bounds["layers.0.weight_hh_i"] == pytest.approx(1 / math.sqrt(16 * 3))
    assert bounds["layers.0.weight_ih_i"] == pytest.approx(1 / math.sqrt(4 * 3))
    assert bounds["layers.1.weight_ih_i"] == pytest.approx(1 / math.sqrt(16 * 3))


# --------------------------------------------------------------------------- Monte Carlo against the mean field
POINT = dict(sigma_w=1.0, sigma_v=1.0, mu_b=0.5, sigma_b=0.3)
MC = dict(channels=64, length=32, kernel_size=3, T=50, burn_in=30, settle=10, n_networks=6)


@pytest.mark.parametrize("name,kernel", [("gru", "gaussian"), ("lstm", "delta-orthogonal")])
def test_untied_module_matches_the_dense_mean_field(name, kernel):
    """Untied (fresh kernels every step; the mean field's exact limit), C = 64, L = 32, K = 3 (fan-in 192, or 64 for
    the delta-orthogonal kernel), at sigma_w = 1 where the recurrent term matters: Q of every state, chi (Benettin)
    and, for the GRU, the correlation of neighbouring positions, which follows the two-copy map with shared weights
    and independent inputs (gated_fixed_point(correlations=True): c* = C*/Q*). Tolerance: 4 standard errors over
    6 independent networks."""
    m = measure_conv(name, kernel=kernel, tied=False, seed=5, **MC, **POINT)
    fp = mf.gated_fixed_point(name, correlations=name == "gru", **POINT)
    checks = [("chi", fp.chi), ("Q_h", fp.Q_star)] + ([("Q_c", fp.Qc_star)] if fp.Qc_star is not None else [])
    if name == "gru":
        checks.append(("corr_h", fp.c_star))
    for key, theory in checks:
        assert abs(m[key] - theory) <= 4 * m[f"{key}_se"], (key, m[key], m[f"{key}_se"], theory)


#: the LSTM's point: small recurrent weights, a forget gate blind to the input with bias 2 (as the critical
#: initialisation sets it for a short task); the GRU's point is the critical one for T = 10 (fixture)
LSTM_TIED = dict(sigma_w=0.2, sigma_v=1.0, sigma_v_f=0.0, mu_b_f=2.0)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_tied_module_behaves_as_the_dense_cell_of_width_ck(name, critical_gru):
    """Tied (a real network), small recurrent weights (sigma_w = 0.2), Gaussian kernels, C = 64, L = 32, K = 3:
    chi of the ConvGRU/ConvLSTM against the tied dense nn.GRUCell/nn.LSTMCell of width N = C K = 192 (4 combined
    standard errors over 6 networks each). The GRU at its critical point also against the initialiser's prediction
    (within 0.3%: the tied shift, the same for the dense cell). The tied LSTM departs from the untied prediction in
    the same way as the dense one (its forget gate is modulated by a slowly varying h): a property of tied weights,
    not of the convolution."""
    if name == "gru":
        hp = critical_gru[1]["layers"][0]
        point = {k: hp[k] for k in get_cell(name).hyperparameters if k != "R"}
    else:
        point = LSTM_TIED
    conv = measure_conv(name, 64, 32, 3, tied=True, T=80, burn_in=60, n_networks=6, seed=1, **point)
    dense = measure_gated_chi(name, N=192, N_in=64, T=80, burn_in=60, tied=True, n_networks=6, seed=1, **point)
    se = math.hypot(conv["chi_se"], dense["chi_se"])
    assert abs(conv["chi"] - dense["chi"]) <= 4 * se, (conv["chi"], dense["chi"], se)
    if name == "gru":
        assert abs(conv["chi"] / hp["chi"] - 1) <= 3e-3
        assert abs(conv["Q_h"] / hp["Q_star"] - 1) <= 0.03


# --------------------------------------------------------------------------- the seizure-like task
TASK = dict(T=60, electrodes=8, burst_electrodes=3, burst_length=10, onset_fraction=0.25)


def test_task_labels_and_bursts():
    """The noise draws do not depend on the amplitude, so x(A = 2) - x(A = 1) is exactly the burst at A = 1: it must
    sit on burst_electrodes neighbouring electrodes (cyclically) from the recorded onset for burst_length steps,
    inside the first onset_fraction * T steps, and exist exactly for the positive labels."""
    n = 400
    d1 = sz.seizure_data(n, generator=torch.Generator().manual_seed(7), amplitude=1.0, **TASK)
    d2 = sz.seizure_data(n, generator=torch.Generator().manual_seed(7), amplitude=2.0, **TASK)
    burst = d2["x"] - d1["x"]
    assert torch.equal(d1["y"], d2["y"]) and set(d1["y"].tolist()) <= {0.0, 1.0}
    assert abs(float(d1["y"].mean()) - 0.5) <= 4 * 0.5 / math.sqrt(n)  # Bernoulli(1/2): 4 standard errors
    for i in range(n):
        support = torch.nonzero(burst[i].abs() > 1e-6)
        if d1["y"][i] == 0:
            assert len(support) == 0 and d1["onset"][i] == -1
            continue
        t0, e0 = int(d1["onset"][i]), int(d1["first"][i])
        assert 0 <= t0 and t0 + 10 <= int(0.25 * 60)
        assert set(support[:, 0].tolist()) <= set(range(t0, t0 + 10))
        assert set(support[:, 1].tolist()) == {(e0 + k) % 8 for k in range(3)}
        assert float(burst[i].abs().max()) <= 1.0 + 1e-6
    again = sz.seizure_data(n, generator=torch.Generator().manual_seed(7), amplitude=1.0, **TASK)
    assert torch.equal(again["x"], d1["x"])


TINY = dict(T=30, burst_length=5, channels=4, steps=6, batch_size=4, eval_every=3, n_test=8, lr=1e-2)


@pytest.mark.parametrize("init", ["critical", "default"])
def test_tiny_training_resumes_from_its_checkpoint(tmp_path, init):
    """Straight through, or stopped after 3 of 6 steps and resumed: the same curve to the last bit."""
    config = sz.SeizureConfig(cell="gru", init=init, **TINY)
    straight = sz.train(config, tmp_path / "a.json", log=None, command="test")
    stopped = sz.train(config, tmp_path / "b.json", stop_after=3, log=None, command="test")
    assert stopped["status"] == "interrupted" and (tmp_path / ".b.ckpt.pt").exists()
    resumed = sz.train(config, tmp_path / "b.json", log=None, command="test")
    assert resumed["curve"] == [{**p, "wall_s": q["wall_s"]} for p, q in zip(straight["curve"], resumed["curve"])]
    assert not (tmp_path / ".b.ckpt.pt").exists()
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["format"] == sz.RESULT_FORMAT and saved["provenance"]["sessions"] == 2
    for key in ("command", "git_commit", "git_dirty", "device", "date_utc", "wall_time_s"):
        assert key in saved["provenance"]
    assert saved["init"]["scheme"] == init
    again = sz.train(config, tmp_path / "b.json", log=None)  # a finished run is not redone
    assert again["provenance"] == saved["provenance"]


def test_bad_input_is_refused_in_one_line(tmp_path, capsys):
    bad = [lambda: ConvGatedCell("gru", 8, 8, kernel_size=2),
           lambda: ConvGatedCell("gru", 8, 8, padding="reflect"),
           lambda: ConvGatedCell("gru", 0, 8),
           lambda: ConvGatedCell("minimal", 8, 4),
           lambda: ConvGatedCell("gru", 8, 4)(torch.zeros(2, 3, 5)),
           lambda: ConvGatedRNN("lstm", 8, 4)(torch.zeros(3, 2, 4)),
           lambda: init_conv_gated_(torch.nn.GRU(4, 8)),
           lambda: init_conv_gated_(ConvGatedCell("gru", 4, 4), kernel="orthogonal"),
           lambda: init_conv_gated_(ConvGatedCell("gru", 4, 4), sigma_w=-1.0),
           lambda: critical_conv_init_(ConvGatedCell("gru", 4, 4), 0),
           lambda: measure_conv("gru", 4, 4, T=5, settle=5),
           lambda: sz.SeizureConfig(T=50).validated(),
           lambda: sz.SeizureConfig(cell="vanilla").validated(),
           lambda: sz.SeizureConfig(amplitude=float("nan")).validated(),
           lambda: sz.train(sz.SeizureConfig(**TINY), tmp_path / "x.txt")]
    for f in bad:
        with pytest.raises(DomainError) as exc:
            f()
        assert "\n" not in str(exc.value)
    with pytest.raises(UnknownCellError):
        ConvGatedCell("nope", 4, 4)
    with pytest.raises(MftrnnError, match="does not exist"):
        sz.run(tmp_path / "missing", seeds=[0])
    assert sz.main(["--out", str(tmp_path / "missing"), "--seeds", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
