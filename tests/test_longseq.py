"""Long-sequence tasks and initialisation schemes for nn.LSTM / nn.GRU (mftrnn/experiments/memory_tasks.py,
mftrnn/experiments/longseq.py, ``mftrnn longseq``).

No test reads ``../shared/data``: the copy task is generated, the digits are scikit-learn's 8x8 images.  Runs are
tiny (copy T = 10, hidden 16, tens of steps: ~0.1 s each on one core) and seeded; the resume tests compare curves
bit for bit (one thread, same device).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import mftrnn
from mftrnn.experiments import longseq as ls
from mftrnn.experiments import memory_tasks as mt
from mftrnn.experiments.seqdigits import SequentialDigits, load_sklearn_digits
from mftrnn.nets import gated_init as nets_init

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return load_sklearn_digits()


def tiny(task="copy", **kw) -> ls.LongSeqConfig:
    fields = dict(ls.GRIDS["tiny"]["tasks"][task])
    fields["T"] = fields["T"][0]
    return ls.LongSeqConfig(**{**fields, "task": task, **kw})


def _strip(curve):
    return [{k: v for k, v in p.items() if k != "wall_s"} for p in curve]


# ------------------------------------------------------------------------------------------------- copy task

@pytest.mark.parametrize("T", [1, 2, 7])
def test_copy_sequences_layout(T):
    S, K = mt.N_COPY, mt.N_SYMBOLS
    x, y = mt.copy_memory_sequences(64, T, torch.Generator().manual_seed(0))
    L = T + 2 * S
    assert x.shape == y.shape == (64, L) and x.dtype == y.dtype == torch.int64
    sym = x[:, :S]
    assert int(sym.min()) >= 1 and int(sym.max()) <= K
    assert torch.all(x[:, S:S + T - 1] == mt.BLANK)
    assert torch.all(x[:, S + T - 1] == K + 1)  # the delimiter
    assert torch.all(x[:, S + T:] == mt.BLANK)
    assert torch.all(y[:, :T + S] == mt.BLANK)
    assert torch.equal(y[:, T + S:], sym)  # each symbol recalled T + S steps after it was shown
    task = mt.CopyMemoryTask(T, n_test=8)
    xb, yb = task.train_batch(5, torch.Generator().manual_seed(1))
    assert xb.shape == (5, L, K + 2) and xb.dtype == torch.float32 and yb.shape == (5, L)
    assert torch.equal(xb.argmax(-1), mt.copy_memory_sequences(5, T, torch.Generator().manual_seed(1))[0])
    assert task.length == task.memory_length == L and task.n_classes == K + 1


def test_copy_baseline_is_the_entropy_of_the_per_step_targets():
    """The memoryless baseline 10 ln 8 / (T + 20) against the data: the best predictor that ignores the inputs
    predicts each step's empirical target law, and its loss on the data is the mean over steps of the plug-in
    entropy of those laws.  Estimated from n = 20,000 sequences: the plug-in entropy of a uniform law on 8 symbols
    is biased by -(8 - 1)/(2n) = -1.75e-4 per recall step and fluctuates by O(1/n); averaged over the L = 25 steps
    (10 of them random) the error is < 1e-4, so 1e-3 is a safe tolerance that a wrong formula (e.g. dividing by
    T + 10, an error of 0.28) cannot meet."""
    T, n = 5, 20_000
    _, y = mt.copy_memory_sequences(n, T, torch.Generator().manual_seed(3))
    L = y.shape[1]
    entropy = 0.0
    for t in range(L):
        p = np.bincount(y[:, t].numpy(), minlength=mt.N_SYMBOLS + 1) / n
        p = p[p > 0]
        entropy -= float((p * np.log(p)).sum())
    assert abs(entropy / L - mt.copy_memory_baseline(T)) < 1e-3
    assert mt.copy_memory_baseline(T) == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-15)
    # the same predictor through the training loss: blank for sure, then uniform over the 8 symbols
    logits = torch.full((n, L, mt.N_SYMBOLS + 1), -1e4)
    logits[:, :T + mt.N_COPY, mt.BLANK] = 0.0
    logits[:, T + mt.N_COPY:, 1:] = 0.0
    assert float(ls._loss(logits, y)) == pytest.approx(mt.copy_memory_baseline(T), rel=1e-6)


def test_copy_test_set_is_fixed():
    a, b = mt.CopyMemoryTask(4, n_test=10), mt.CopyMemoryTask(4, n_test=10)
    assert torch.equal(a.test_inputs, b.test_inputs) and torch.equal(a.test_targets, b.test_targets)
    chunks = list(a.test_batches(chunk=3))
    assert [c[0].shape[0] for c in chunks] == [3, 3, 3, 1]


# ---------------------------------------------------------------------------------------------- padded digits

@pytest.mark.parametrize("pad", ["blank", "noise"])
def test_padded_digits(digits, pad):
    T = 30
    task = mt.PaddedDigits(digits, T, pad=pad, n_test=50)
    ref = SequentialDigits(digits, T_pad=0)
    x, y = task.train_batch(400, torch.Generator().manual_seed(0))
    assert x.shape == (400, 8 + T, 8) and y.shape == (400,) and task.length == task.memory_length == 8 + T
    idx = torch.randint(task.n_train, (400,), generator=torch.Generator().manual_seed(0))
    xi, yi = ref.batch(idx)
    assert torch.equal(x[:, :8], xi) and torch.equal(y, yi)  # the image rows, normalised by SequentialDigits
    tail = x[:, 8:]
    if pad == "blank":
        assert torch.all(tail == 0)
    else:
        # N(0, R = 1) noise: 400 * 30 * 8 = 96,000 draws, standard error of the second moment sqrt(2/96000) =
        # 0.0046 and of the mean 0.0032; 5 standard errors
        assert abs(float(tail.pow(2).mean()) - 1.0) < 0.023 and abs(float(tail.mean())) < 0.016
    first = [b[0] for b in task.test_batches(chunk=20)]
    again = [b[0] for b in task.test_batches(chunk=20)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # the same test noise at every evaluation
    assert sum(b.shape[0] for b in first) == 50


def test_padded_digits_bad_input(digits):
    with pytest.raises(mftrnn.DomainError, match="padding"):
        mt.PaddedDigits(digits, 5, pad="zeros")
    with pytest.raises(mftrnn.DataError, match="n_test"):
        mt.PaddedDigits(digits, 5, n_test=10 ** 6)
    with pytest.raises(mftrnn.DomainError, match="T must be"):
        mt.PaddedDigits(digits, -1)


# ------------------------------------------------------------------------------------------ initialisations

def _pair(cell: str, hidden=40, layers=2, seed=0):
    """Two modules with PyTorch's default drawn from the same seed."""
    cls = nn.LSTM if cell == "lstm" else nn.GRU
    torch.manual_seed(seed)
    a = cls(6, hidden, num_layers=layers)
    torch.manual_seed(seed)
    b = cls(6, hidden, num_layers=layers)
    return a, b


def _gate(module, name: str, gate: str, cell: str):
    """Rows of ``name`` belonging to ``gate`` (PyTorch's stacking: i, f, g, o / r, z, n)."""
    order = "ifgo" if cell == "lstm" else "rzn"
    p = getattr(module, name)
    n = p.shape[0] // len(order)
    k = order.index(gate)
    return p[k * n:(k + 1) * n]


def _unchanged_except(a, b, cell, touched: set):
    """Every parameter row of ``a`` equals ``b`` (the untouched twin) except the biases of ``touched`` gates."""
    order = "ifgo" if cell == "lstm" else "rzn"
    names = [n for n, _ in a.named_parameters()]
    assert names == [n for n, _ in b.named_parameters()] and names
    for name in names:
        for g in order:
            if name.startswith("bias") and g in touched:
                continue
            assert torch.equal(_gate(a, name, g, cell), _gate(b, name, g, cell)), (name, g)


@pytest.mark.parametrize("cell", ls.CELLS)
def test_default_scheme_leaves_pytorch_default(cell):
    a, b = _pair(cell)
    info = ls.initialise_(a, "default", 100, torch.Generator().manual_seed(0))
    _unchanged_except(a, b, cell, set())
    assert info["scheme"] == "default"


@pytest.mark.parametrize("cell", ls.CELLS)
def test_forget1_sets_the_memory_gate_bias_sum_to_one(cell):
    a, b = _pair(cell)
    gate = "f" if cell == "lstm" else "z"
    info = ls.initialise_(a, "forget1", 100)
    for layer in range(2):
        s = _gate(a, f"bias_ih_l{layer}", gate, cell) + _gate(a, f"bias_hh_l{layer}", gate, cell)
        assert torch.all(s == 1.0)
        # the default's sum was U(-1/sqrt N, 1/sqrt N) twice: nowhere 1
        d = _gate(b, f"bias_ih_l{layer}", gate, cell) + _gate(b, f"bias_hh_l{layer}", gate, cell)
        assert float(d.detach().abs().max()) <= 2 / math.sqrt(40)
    _unchanged_except(a, b, cell, {gate})
    assert info["bias_sums"][gate] == {"min": 1.0, "mean": 1.0, "max": 1.0}


@pytest.mark.parametrize("cell", ls.CELLS)
def test_chrono_draws_log_uniform_timescales(cell):
    """b = ln u with u ~ U(1, T - 1): the bias sums exp'd are tested against that uniform law by Kolmogorov-Smirnov
    on 3,000 units (critical value 1.63/sqrt(n) = 0.030 at the 1 % level); a log-uniform u (the usual mistake)
    gives a distance of about 0.3 at T = 200.  LSTM: b_i = -b_f exactly; the other gates stay PyTorch's."""
    T, hidden = 200, 3000
    cls = nn.LSTM if cell == "lstm" else nn.GRU
    torch.manual_seed(0)
    a = cls(3, hidden)
    torch.manual_seed(0)
    b = cls(3, hidden)
    gate = "f" if cell == "lstm" else "z"
    ls.initialise_(a, "chrono", T, torch.Generator().manual_seed(5))
    bf = (_gate(a, "bias_ih_l0", gate, cell) + _gate(a, "bias_hh_l0", gate, cell)).double().detach()
    u = torch.sort(torch.exp(bf)).values.numpy()
    assert u.min() >= 1.0 - 1e-5 and u.max() <= (T - 1) * (1 + 1e-6)
    cdf = (u - 1.0) / (T - 2)
    n = len(u)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.63 / math.sqrt(n)
    touched = {gate}
    if cell == "lstm":
        bi = _gate(a, "bias_ih_l0", "i", cell) + _gate(a, "bias_hh_l0", "i", cell)
        assert torch.equal(bi.detach(), -_gate(a, "bias_ih_l0", "f", cell).detach())
        assert torch.all(_gate(a, "bias_hh_l0", "i", cell) == 0)
        touched.add("i")
    _unchanged_except(a, b, cell, touched)


def test_chrono_reaches_every_layer_and_refuses_short_T():
    a, _ = _pair("lstm", layers=2)
    ls.initialise_(a, "chrono", 50, torch.Generator().manual_seed(0))
    for layer in range(2):
        s = (_gate(a, f"bias_ih_l{layer}", "f", "lstm") + _gate(a, f"bias_hh_l{layer}", "f", "lstm")).detach()
        # ln u, u ~ U(1, 49): values in [0, ln 49 = 3.89], standard deviation 0.82 (40 units: > 0.5 surely)
        assert float(s.min()) >= 0.0 and float(s.max()) <= math.log(49) + 1e-6 and float(s.std()) > 0.5
    with pytest.raises(mftrnn.DomainError, match="T >= 3"):
        ls.initialise_(a, "chrono", 2)


def test_schemes_refuse_other_modules():
    with pytest.raises(mftrnn.DomainError, match="nn.LSTM"):
        ls.initialise_(nn.RNN(3, 4), "forget1", 10)
    with pytest.raises(mftrnn.DomainError, match="bias=False"):
        ls.initialise_(nn.LSTM(3, 4, bias=False), "forget1", 10)
    with pytest.raises(mftrnn.DomainError, match="unknown initialisation"):
        ls.initialise_(nn.LSTM(3, 4), "xavier", 10)


@pytest.mark.parametrize("cell", ls.CELLS)
def test_critical_scheme_calls_the_initialiser_and_says_when_it_is_missing(cell, monkeypatch):
    name = f"critical_{cell}_init_"
    monkeypatch.delattr(nets_init, name, raising=False)
    with pytest.raises(mftrnn.MftrnnError, match=name):
        ls.initialise_(_pair(cell)[0], "critical", 100)
    assert ls.scheme_unavailable("critical", cell)
    calls = []

    def fake(module, *, T, generator=None):
        calls.append((module, T, generator))
        return {"sigma_w": np.float64(1.5), "xi": float("inf")}

    monkeypatch.setattr(nets_init, name, fake, raising=False)
    m, g = _pair(cell)[0], torch.Generator()
    info = ls.initialise_(m, "critical", 77, g)
    assert calls == [(m, 77, g)]
    assert info["hyperparameters"] == {"sigma_w": 1.5, "xi": None}
    assert ls.scheme_unavailable("critical", cell) is None


# ------------------------------------------------------------------------------------------------- training

def _valid_json(path):
    def no_constant(c):
        raise AssertionError(f"non-JSON constant {c} in {path}")
    return json.loads(Path(path).read_text(), parse_constant=no_constant)


def test_tiny_copy_run_trains_and_records_provenance(tmp_path):
    cfg = tiny(cell="lstm", init="chrono")
    out = tmp_path / "copy.json"
    res = ls.train(cfg, out, log=None, command="test")
    assert _valid_json(out) == res
    assert res["format"] == ls.RESULT_FORMAT and res["status"] == "finished"
    assert [p["step"] for p in res["curve"]] == [0, 20, 40]
    c0, cN = res["curve"][0], res["curve"][-1]
    # from about the uniform guess (ln 9 = 2.20 per step) towards the baseline (10 ln 8 / 30 = 0.69): 40 Adam steps
    # (lr 1e-2) take this run to 0.39 of its initial loss (measured; 0.34-0.59 over the six cell x init pairs of
    # the tiny grid), so < 0.6 is asserted -- a run that does not train stays near 1
    assert c0["test_loss"] == pytest.approx(math.log(9), abs=0.15)
    assert cN["test_loss"] < 0.6 * c0["test_loss"]
    assert cN["loss_over_baseline"] == pytest.approx(cN["test_loss"] / mt.copy_memory_baseline(10), rel=1e-12)
    assert res["task"]["baseline_loss"] == pytest.approx(10 * math.log(8) / 30)
    prov = res["provenance"]
    for key in ("command", "git_commit", "git_dirty", "device", "torch", "date_utc", "started", "finished",
                "wall_time_s", "sessions", "session_commits", "threads"):
        assert key in prov, key
    assert prov["command"] == "test" and prov["device"].startswith("cpu") and prov["sessions"] == 1
    assert prov["threads"] == 1 and prov["wall_time_s"] > 0
    assert res["init"]["scheme"] == "chrono" and res["init"]["T_max"] == 30
    assert not ls.default_checkpoint_path(out).exists()


def test_tiny_digits_run_learns(tmp_path, digits):
    """Sklearn digits padded by 2 blanks (L = 10), hidden 16, 150 Adam steps: the test accuracy rises from chance
    (0.1; standard error on the 100 test images 0.03) to about 0.8 (measured); asserting > 0.5 is 13 standard
    errors above chance."""
    cfg = tiny("digits", cell="gru", init="forget1", T=2, steps=150, eval_every=50, lr=1e-2)
    res = ls.train(cfg, tmp_path / "d.json", data=digits, log=None)
    assert res["status"] == "finished" and res["task"]["dataset"] == "sklearn"
    assert res["final"]["test_accuracy"] > 0.5
    assert res["config"]["pad"] == "blank" and res["task"]["length"] == 10


@pytest.mark.parametrize("task", ["copy", "digits"])
def test_stop_and_resume_gives_the_uninterrupted_curve(tmp_path, digits, task, monkeypatch):
    kw = dict(pad="noise", dataset="sklearn") if task == "digits" else {}
    cfg = tiny(task, cell="gru" if task == "digits" else "lstm", init="chrono", steps=50, eval_every=20, **kw)
    data = digits if task == "digits" else None
    ref = ls.train(cfg, tmp_path / "ref.json", data=data, log=None)
    out = tmp_path / "run.json"
    ckpt = ls.default_checkpoint_path(out)
    part = ls.train(cfg, out, data=data, log=None, stop_after=27)  # between two evaluations
    assert part["status"] == "interrupted" and part["step"] == 27 and ckpt.exists() and not out.exists()
    done = ls.train(cfg, out, data=data, log=None)
    assert _strip(done["curve"]) == _strip(ref["curve"])
    assert done["provenance"]["sessions"] == 2 and len(done["provenance"]["session_commits"]) == 2
    assert not ckpt.exists()

    # a finished run is not redone ...
    monkeypatch.setattr(ls, "_loss", lambda *a: (_ for _ in ()).throw(AssertionError("trained again")))
    assert ls.train(cfg, out, data=data, log=None) == _valid_json(out)
    # ... and another configuration does not overwrite it
    with pytest.raises(mftrnn.MftrnnError, match="different configuration"):
        ls.train(dataclasses.replace(cfg, lr=5e-3), out, data=data, log=None)


def test_crash_after_a_checkpoint_resumes_exactly(tmp_path, monkeypatch):
    """A crash (here an exception in the 34th batch) loses the work after the last checkpoint (every 10 steps);
    the rerun repeats it and ends with the uninterrupted curve."""
    cfg = tiny(cell="gru", init="forget1", steps=50, eval_every=20)
    ref = ls.train(cfg, tmp_path / "ref.json", log=None)
    out = tmp_path / "run.json"
    real, calls = mt.CopyMemoryTask.train_batch, []

    def crashing(self, *a, **k):
        calls.append(1)
        if len(calls) == 34:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(mt.CopyMemoryTask, "train_batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        ls.train(cfg, out, log=None, checkpoint_every="10steps")
    monkeypatch.setattr(mt.CopyMemoryTask, "train_batch", real)
    assert torch.load(ls.default_checkpoint_path(out), weights_only=True)["step"] == 30
    done = ls.train(cfg, out, log=None, checkpoint_every="10steps")
    assert _strip(done["curve"]) == _strip(ref["curve"])


_CHILD = """
import sys, time, torch
torch.set_num_threads(1)
from mftrnn.experiments import longseq as ls, memory_tasks as mt
real, calls = mt.CopyMemoryTask.train_batch, []
def slow(self, *a, **k):  # the 9th batch (after the checkpoint at step 5) never ends: the kill lands mid-run
    calls.append(1)
    if len(calls) == 9:
        time.sleep(120)
    return real(self, *a, **k)
mt.CopyMemoryTask.train_batch = slow
cfg = ls.LongSeqConfig(**{cfg!r})
ls.train(cfg, sys.argv[1], log=None, checkpoint_every="5steps")
"""


def test_sigkill_and_rerun_gives_the_uninterrupted_curve(tmp_path):
    """A real kill: the run (its own process) is SIGKILLed during step 9, after its checkpoint at step 5 (the child
    sleeps in its 9th batch, so the kill cannot come too late), then rerun in this process."""
    cfg = tiny(cell="lstm", init="forget1", steps=30, eval_every=10)
    out = tmp_path / "run.json"
    ckpt = ls.default_checkpoint_path(out)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    child = subprocess.Popen([sys.executable, "-c", _CHILD.format(cfg=cfg.to_dict()), str(out)], env=env,
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not ckpt.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ckpt.exists(), child.stderr.read() if child.poll() is not None else "no checkpoint in 90 s"
        time.sleep(0.5)  # into the sleeping 9th batch
        assert child.poll() is None
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL and not out.exists()
    assert torch.load(ckpt, weights_only=True)["step"] == 5
    done = ls.train(cfg, out, log=None)
    ref = ls.train(cfg, tmp_path / "ref.json", log=None)
    assert done["provenance"]["sessions"] == 2
    assert _strip(done["curve"]) == _strip(ref["curve"])


def test_nan_loss_is_recorded_as_diverged(tmp_path, monkeypatch):
    cfg = tiny(steps=30)
    monkeypatch.setattr(ls, "_loss", lambda logits, y: (logits.sum() * float("nan")))
    out = tmp_path / "nan.json"
    with pytest.raises(mftrnn.ConvergenceError, match="diverged at step 0"):
        ls.train(cfg, out, log=None)
    res = _valid_json(out)
    assert res["status"] == "diverged" and "nan" in res["diverged"]["message"]
    with pytest.raises(mftrnn.ConvergenceError, match="nothing redone"):
        ls.train(cfg, out, log=None)


def test_require_clean(tmp_path, monkeypatch):
    cfg = tiny(steps=5, eval_every=5)
    monkeypatch.setattr(ls, "git_state", lambda: {"commit": "a" * 40, "dirty": True})
    with pytest.raises(mftrnn.MftrnnError, match="uncommitted changes"):
        ls.train(cfg, tmp_path / "r.json", log=None, require_clean=True)
    monkeypatch.setattr(ls, "git_state", lambda: {"commit": None, "dirty": None})
    with pytest.raises(mftrnn.MftrnnError, match="not a git checkout"):
        ls.train(cfg, tmp_path / "r.json", log=None, require_clean=True)
    monkeypatch.setattr(ls, "git_state", lambda: {"commit": "b" * 40, "dirty": False})
    res = ls.train(cfg, tmp_path / "r.json", log=None, require_clean=True)
    assert res["provenance"]["git_dirty"] is False
    assert res["provenance"]["session_commits"][0]["commit"] == "b" * 40
    # a checkpoint made at another commit is not resumed into a clean result
    cfg2 = tiny(steps=20, eval_every=5)
    ls.train(cfg2, tmp_path / "s.json", log=None, stop_after=7)
    monkeypatch.setattr(ls, "git_state", lambda: {"commit": "c" * 40, "dirty": False})
    with pytest.raises(mftrnn.MftrnnError, match="was made at commit"):
        ls.train(cfg2, tmp_path / "s.json", log=None, require_clean=True)


# ------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kw,needle", [
    (dict(task="adding"), "unknown task"),
    (dict(cell="vanilla"), "unknown cell"),
    (dict(init="xavier"), "unknown initialisation"),
    (dict(T=0), "T must be"),
    (dict(T=-5), "T must be"),
    (dict(T=2.5), "T must be"),
    (dict(hidden=0), "hidden"),
    (dict(steps=True), "steps"),
    (dict(lr=float("nan")), "lr"),
    (dict(lr=0), "lr"),
    (dict(clip=-1), "clip"),
    (dict(optimizer="sgd"), "optimizer"),
    (dict(dataset="mnist"), "digits task"),
    (dict(task="digits", pad="zeros"), "padding"),
    (dict(task="digits", dataset="cifar"), "data set"),
    (dict(device="tpu"), "device"),
    (dict(T=10 ** 8), "elements"),
    (dict(T=10 ** 400), "T must be an integer <="),
    (dict(hidden=10 ** 6), "parameters"),
    (dict(seed=-1), "seed"),
])
def test_bad_config(kw, needle):
    with pytest.raises(mftrnn.MftrnnError, match=needle):
        ls.LongSeqConfig(**kw).validated()


def test_bad_outputs_and_checkpoints(tmp_path):
    cfg = tiny(steps=20, eval_every=10)
    with pytest.raises(mftrnn.MftrnnError, match=r"\.json"):
        ls.train(cfg, tmp_path / "r.txt", log=None)
    with pytest.raises(mftrnn.MftrnnError, match="does not exist"):
        ls.train(cfg, tmp_path / "missing" / "r.json", log=None)
    with pytest.raises(mftrnn.MftrnnError, match="checkpoint-every"):
        ls.train(cfg, tmp_path / "r.json", log=None, checkpoint_every="often")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(mftrnn.DataError, match="not a long-sequence result"):
        ls.train(cfg, tmp_path / "other.json", log=None)
    out = tmp_path / "r.json"
    ls.train(cfg, out, log=None, stop_after=5)
    with pytest.raises(mftrnn.MftrnnError, match="another configuration"):
        ls.train(dataclasses.replace(cfg, seed=3), out, log=None)
    ckpt = ls.default_checkpoint_path(out)
    raw = bytearray(ckpt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(raw))
    with pytest.raises(mftrnn.MftrnnError, match="damaged"):
        ls.train(cfg, out, log=None)


def test_digits_data_must_match_the_configuration(tmp_path, digits):
    with pytest.raises(mftrnn.DataError, match="configuration says"):
        ls.train(tiny("digits", dataset="mnist"), tmp_path / "d.json", data=digits, log=None)


# ---------------------------------------------------------------------------------------------------- grids

def test_sweep_configs_and_expected_time():
    g = ls.GRIDS["cpu"]
    configs = ls.sweep_configs("cpu")
    n = sum(len(t["T"]) for t in g["tasks"].values()) * len(g["cells"]) * len(g["inits"]) * len(g["seeds"])
    assert len(configs) == n and len({c.filename() for c in configs}) == n
    assert max(c.T for c in configs) >= 1000 and len(g["seeds"]) >= 2
    assert {c.init for c in configs} == {"default", "forget1", "chrono", "critical"}
    only = ls.sweep_configs("cpu", seeds=(0,), tasks=("copy",), inits=("chrono",))
    assert len(only) == len(g["tasks"]["copy"]["T"]) * len(g["cells"])
    timings = {}
    for c in only:
        key = f"{c.task}|{c.dataset}|{c.cell}|T{c.T}|h{c.hidden}|b{c.batch_size}|n{c.n_test}|{c.device}"
        timings[key] = {"step_s": 0.5, "eval_s": 2.0}
    est = ls.expected_wall_time(only, timings=timings)
    assert est["total_s"] == pytest.approx(sum(c.steps * 0.5 + (c.steps // c.eval_every + 1) * 2.0 for c in only))
    with pytest.raises(mftrnn.DomainError, match="unknown grid"):
        ls.sweep_configs("huge")
    with pytest.raises(mftrnn.DomainError, match="no task"):
        ls.sweep_configs("cpu", tasks=("adding",))


def test_step_seconds_measures_a_tiny_shape():
    t = ls.step_seconds(tiny(), repeats=1)
    assert 0 < t["step_s"] < 10 and 0 < t["eval_s"] < 10


def test_run_sweep_refuses_unavailable_schemes_before_running(tmp_path, monkeypatch):
    monkeypatch.delattr(nets_init, "critical_lstm_init_", raising=False)
    with pytest.raises(mftrnn.MftrnnError, match="critical_lstm_init_"):
        ls.run_sweep("tiny", tmp_path, tasks=("copy",), log=None)
    assert list(tmp_path.iterdir()) == []


def test_run_sweep_tiny(tmp_path, digits, monkeypatch):
    monkeypatch.setattr(ls, "GRIDS", {"t": dict(ls.GRIDS["tiny"], inits=("default", "chrono"))})
    import mftrnn.experiments.seqdigits as sd
    monkeypatch.setattr(sd, "load_dataset", lambda name, **k: digits)
    results = ls.run_sweep("t", tmp_path, log=None, steps=10, eval_every=5)
    assert len(results) == 2 * 2 * 2 and all(r["status"] == "finished" for r in results)
    rows = ls.summary(tmp_path)
    assert len(rows) == 8 and all(r["wall_time_s"] > 0 for r in rows)


# ------------------------------------------------------------------------------------------------------ CLI

def _parse(argv):
    from mftrnn.cli.longseq import add_parser
    parser = argparse.ArgumentParser(prog="mftrnn")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["longseq", *argv])


@pytest.mark.parametrize("argv,needle", [
    ([], "give TASK"),
    (["copy", "lstm", "--init", "chrono", "--T", "10"], "--out"),
    (["adding", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json"], "unknown task"),
    (["copy", "rnn", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json"], "unknown cell"),
    (["copy", "lstm", "--init", "he", "--T", "10", "--out", "{tmp}/r.json"], "unknown initialisation"),
    (["copy", "lstm", "--init", "chrono", "--T", "0", "--out", "{tmp}/r.json"], "T must be"),
    (["copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/missing/r.json"], "does not exist"),
    (["copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json", "--lr", "nan"], "lr"),
    (["copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json", "--grid", "x"], "unknown grid"),
    (["copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json", "--device", "cuda:x"], "device"),
    (["copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json", "--pad", "noise"], "digits task"),
    (["copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json", "--checkpoint-every", "x"],
     "checkpoint-every"),
    (["copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json", "--threads", "0"], "threads"),
    (["copy", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json", "--seeds", "1"], "belong to"),
    (["--sweep", "cpu"], "--out-dir"),
    (["--sweep", "nope", "--out-dir", "{tmp}"], "unknown grid"),
    (["--sweep", "cpu", "--out-dir", "{tmp}/nothing"], "not an existing folder"),
    (["--sweep", "cpu", "--out-dir", "{tmp}", "--seeds", "0,x"], "integers"),
    (["--sweep", "cpu", "--out-dir", "{tmp}", "--seeds", "0,0"], "distinct"),
    (["--sweep", "cpu", "--out-dir", "{tmp}", "--T", "5"], "chooses --T"),
    (["--sweep", "cpu", "--out-dir", "{tmp}", "--tasks", "adding"], "no task"),
    (["--sweep", "cpu", "--out-dir", "{tmp}", "--inits", "he"], "unknown initialisation"),
    (["digits", "lstm", "--init", "chrono", "--T", "10", "--out", "{tmp}/r.json", "--data-dir", "{tmp}/none"],
     "MNIST data not found"),
])
def test_cli_bad_input_is_one_line(tmp_path, argv, needle, monkeypatch):
    from mftrnn.cli.app import CliError
    from mftrnn.experiments import data as D
    monkeypatch.setattr(D, "_fetch", lambda url: pytest.fail(f"tried to fetch {url}"))
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    if needle != "MNIST data not found":  # that one fails inside train, loading the data
        monkeypatch.setattr(ls, "train", lambda *a, **k: pytest.fail("a bad command line reached training"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    from mftrnn.cli.longseq import cmd_longseq
    with pytest.raises((CliError, mftrnn.MftrnnError)) as info:
        cmd_longseq(_parse(argv), argv)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg.strip() and "nan" != msg
    assert not (tmp_path / "r.json").exists()


def test_cli_run_rerun_and_plan(tmp_path, capsys):
    from mftrnn.cli.longseq import cmd_longseq
    out = tmp_path / "c.json"
    argv = ["copy", "gru", "--init", "forget1", "--T", "5", "--grid", "tiny", "--steps", "10", "--eval-every", "5",
            "--quiet", "--out", str(out)]
    assert cmd_longseq(_parse(argv), argv) == 0
    res = _valid_json(out)
    assert res["provenance"]["command"].startswith("mftrnn copy gru --init forget1")
    assert res["config"]["hidden"] == ls.GRIDS["tiny"]["tasks"]["copy"]["hidden"] and res["config"]["T"] == 5
    assert "finished" in capsys.readouterr().out
    assert cmd_longseq(_parse(argv), argv) == 0  # rerun: skipped
    assert _valid_json(out) == res
    plan = ["--sweep", "tiny", "--out-dir", str(tmp_path), "--tasks", "copy", "--inits", "chrono", "--plan",
            "--quiet"]
    assert cmd_longseq(_parse(plan), plan) == 0
    text = capsys.readouterr().out
    assert "copy-T10-lstm-chrono-s0.json" in text and "2 runs, predicted wall time" in text


def test_cli_through_mftrnn_main(tmp_path, capsys):
    from mftrnn.cli import app
    parser = app._build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "longseq" not in sub.choices:
        pytest.skip("mftrnn longseq is not wired into mftrnn.cli.app yet")
    rc = app.main(["longseq", "copy", "lstm", "--init", "chrono", "--T", "0", "--out", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert rc == 1 and err.startswith("mftrnn: error: ") and len(err.strip().splitlines()) == 1
    out_file = tmp_path / "ok.json"
    rc = app.main(["longseq", "copy", "lstm", "--init", "default", "--T", "3", "--grid", "tiny", "--steps", "4",
                   "--eval-every", "2", "--quiet", "--out", str(out_file)])
    assert rc == 0 and _valid_json(out_file)["provenance"]["command"].startswith("mftrnn longseq copy lstm")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: --device cuda would run")
def test_cuda_without_a_device_is_one_line(tmp_path):
    from mftrnn.cli.longseq import cmd_longseq
    argv = ["copy", "lstm", "--init", "chrono", "--T", "10", "--device", "cuda", "--out", str(tmp_path / "r.json")]
    with pytest.raises(mftrnn.MftrnnError, match="CUDA is not available") as info:
        cmd_longseq(_parse(argv), argv)
    assert "\n" not in str(info.value) and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("kw", [dict(T=5), dict(cell="gru"), dict(seed=3), dict(width=3)])
def test_sweep_configs_refuse_to_override_the_axes(kw):
    with pytest.raises(mftrnn.DomainError, match="cannot override"):
        ls.sweep_configs("tiny", **kw)


def test_critical_scheme_with_the_real_initialiser():
    """The real critical initialiser through the scheme: the GRU's update-gate bias sum is the one chosen for
    xi = T (T = the sequence length the scheme passes)."""
    m = torch.nn.GRU(10, 16).double()
    info = ls.initialise_(m, "critical", 30, torch.Generator().manual_seed(0))
    b_z = (m.bias_ih_l0 + m.bias_hh_l0).chunk(3)[1]
    assert float(b_z.mean()) == pytest.approx(info["hyperparameters"]["mu_b_z"], abs=1e-12)
    assert info["hyperparameters"]["xi"] == pytest.approx(30, rel=1e-6)
