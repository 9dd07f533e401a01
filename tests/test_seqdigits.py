"""The sequential-digits experiment (mftrnn/seqdigits.py and ``mftrnn digits``).

No test reads ``../shared/data`` or the network: MNIST-like IDX files are generated here (with their sha256
injected into :data:`mftrnn.experiments.seqdigits.MNIST_SHA256`), downloads go through a fake fetcher, and training uses
scikit-learn's 8x8 digits (preset ``tiny``: 300 Adam steps of batch 32 on 1,347 training images, ~0.5 s a run
on one core).

Thresholds.  Chance accuracy is 1/10; on the fixed 300-image test subset its binomial standard error is
sqrt(0.1*0.9/300) = 0.017.  Tiny runs reach 0.71-0.94 final test accuracy (measured over the 9 configurations of
``mftrnn digits --sweep tiny`` -- default, critical and off-critical initialisations of both cells -- with seeds 0, 1,
2), so "learns" is asserted as accuracy > 0.5: more than 20 standard errors above chance, and 0.21 below the worst
measured run.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math

import numpy as np
import pytest
import torch

import mftrnn
from mftrnn.experiments import data as D
from mftrnn.experiments import seqdigits as sd
from mftrnn.cli.app import main
from mftrnn.experiments.seqdigits import DigitsConfig, SequentialDigits, read_idx, write_idx

LEARNS = 0.5  # see the module docstring


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-for-bit reproducibility (resume test) and fair sharing of the 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(url):
        raise AssertionError(f"test tried to fetch {url}")
    monkeypatch.setattr(D, "_fetch", refuse)
    monkeypatch.delenv(D.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def digits():
    return sd.load_sklearn_digits()


def tiny(**kw) -> DigitsConfig:
    return DigitsConfig(**{**sd.PRESETS["tiny"], **kw})


# ----------------------------------------------------------------------------------------------------- IDX files

@pytest.mark.parametrize("array", [
    np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
    np.array([5, 0, 9], dtype=np.uint8),
    np.array([[-3, 7]], dtype=np.int8),
    np.array([1, -2, 30000], dtype=np.int16),
    np.array([[1, -2], [2**31 - 1, -2**31]], dtype=np.int32),
    np.array([0.5, -1e30, np.pi], dtype=np.float32),
    np.linspace(-1, 1, 12).reshape(2, 2, 3),
])
def test_idx_round_trip(array):
    raw = write_idx(array)
    back = read_idx(raw)
    assert back.shape == array.shape and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_idx_header_is_the_mnist_layout():
    raw = write_idx(np.zeros((3, 28, 28), dtype=np.uint8))
    assert raw[:4] == b"\x00\x00\x08\x03"  # magic 0x00000803 of MNIST image files
    assert raw[4:16] == (3).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    assert len(raw) == 16 + 3 * 28 * 28


@pytest.mark.parametrize("mutate,needle", [
    (lambda r: r[:3], "not an IDX file"),
    (lambda r: b"\x01" + r[1:], "magic"),
    (lambda r: r[:2] + b"\x07" + r[3:], "type code"),
    (lambda r: r[:3] + b"\x00" + r[4:], "0 dimensions"),
    (lambda r: r[:10], "truncated IDX header"),
    (lambda r: r[:-1], "truncated"),
    (lambda r: r + b"\x00", "trailing"),
    (lambda r: r[:3] + b"\x02" + r[4:], "trailing"),  # claims 2 dims: the third size becomes data
])
def test_idx_corrupt_files_raise_dataerror(mutate, needle):
    raw = write_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    with pytest.raises(mftrnn.DataError, match=needle):
        read_idx(mutate(raw), "x.idx")


# ---------------------------------------------------------------------------------------------------- MNIST files

def _fake_mnist(rng, n):
    images = rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels


def write_mnist(root, gz=True, n_train=12, n_test=6, seed=0):
    """Small MNIST-like IDX files under ``root/mnist``; returns {name: uncompressed bytes}."""
    rng = np.random.default_rng(seed)
    contents = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = _fake_mnist(rng, n)
        fi, fl = sd.MNIST_FILES[split]
        contents[fi], contents[fl] = write_idx(images), write_idx(labels)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in contents.items():
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return contents


@pytest.fixture
def mnist_digests(monkeypatch, no_network):
    def inject(contents):
        for name, raw in contents.items():
            monkeypatch.setitem(sd.MNIST_SHA256, name, _sha(raw))
    return inject


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_reads_verified_idx(tmp_path, mnist_digests, gz):
    contents = write_mnist(tmp_path, gz=gz)
    mnist_digests(contents)
    d = sd.load_mnist(tmp_path)
    assert d.x_train.shape == (12, 5, 4) and d.x_test.shape == (6, 5, 4) and (d.rows, d.cols) == (5, 4)
    images = read_idx(contents["train-images-idx3-ubyte"])
    np.testing.assert_allclose(d.x_train, images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_test, read_idx(contents["t10k-labels-idx1-ubyte"]))
    assert d.y_train.dtype == np.int64 and len(d.sources) == 4


def test_load_mnist_env_var(tmp_path, mnist_digests, monkeypatch):
    mnist_digests(write_mnist(tmp_path))
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path))
    assert sd.load_mnist().x_train.shape == (12, 5, 4)


def test_load_mnist_checksum_mismatch(tmp_path, no_network):
    write_mnist(tmp_path)  # the canonical digests do not match these files
    with pytest.raises(mftrnn.DataError, match="checksum mismatch"):
        sd.load_mnist(tmp_path)


def test_load_mnist_inconsistent_files(tmp_path, mnist_digests):
    contents = write_mnist(tmp_path, gz=False)
    bad = write_idx(np.full(5, 12, dtype=np.uint8))  # labels outside 0..9, and 5 labels for 12 images
    (tmp_path / "mnist" / "train-labels-idx1-ubyte").write_bytes(bad)
    mnist_digests({**contents, "train-labels-idx1-ubyte": bad})
    with pytest.raises(mftrnn.DataError, match="12 images but 5 labels"):
        sd.load_mnist(tmp_path)


def test_missing_mnist_message(tmp_path, no_network):
    with pytest.raises(mftrnn.DataError) as exc:
        sd.load_mnist(tmp_path)
    msg = str(exc.value)
    for needle in ("MNIST data not found", str(tmp_path / "mnist"), D.ENV_VAR, "--download",
                   "ossci-datasets.s3.amazonaws.com", "train-images-idx3-ubyte"):
        assert needle in msg
    assert not (tmp_path / "mnist").exists()  # nothing fetched without --download


def test_download_fetches_only_missing_and_verifies(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    source = tmp_path / "source"
    contents = write_mnist(source)
    for name, raw in contents.items():
        monkeypatch.setitem(sd.MNIST_SHA256, name, _sha(raw))
    target = tmp_path / "target"
    (target / "mnist").mkdir(parents=True)
    keep = "t10k-labels-idx1-ubyte"
    (target / "mnist" / keep).write_bytes(contents[keep])
    fetched = []

    def fetch(url):
        fetched.append(url)
        return (source / "mnist" / url.rsplit("/", 1)[1]).read_bytes()
    monkeypatch.setattr(D, "_fetch", fetch)
    d = sd.load_mnist(target, download=True)
    assert len(fetched) == 3 and not any(keep in u for u in fetched)
    assert all(u.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") and u.endswith(".gz")
               for u in fetched)
    assert d.x_train.shape == (12, 5, 4)
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(
        [keep] + [n + ".gz" for n in contents if n != keep])


def test_download_with_wrong_content_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)
    monkeypatch.setattr(D, "_fetch", lambda url: gzip.compress(b"not mnist"))
    with pytest.raises(mftrnn.DataError, match="checksum mismatch"):
        sd.load_mnist(tmp_path, download=True)
    assert not (tmp_path / "mnist").exists() or list((tmp_path / "mnist").iterdir()) == []


# ------------------------------------------------------------------------------------------------------- the task

@pytest.mark.parametrize("pixel", [False, True])
def test_task_shapes_padding_and_second_moment(digits, pixel):
    R, T_pad = 1.7, 5
    task = SequentialDigits(digits, T_pad=T_pad, R=R, pixel=pixel)
    steps, feats = (64, 1) if pixel else (8, 8)
    assert (task.image_steps, task.n_features, task.T) == (steps, feats, steps + T_pad)
    x, y = task.batch(torch.arange(10))
    assert x.shape == (10, steps + T_pad, feats) and y.shape == (10,) and x.dtype == torch.float32
    assert torch.all(x[:, steps:] == 0)
    assert torch.equal(y, torch.as_tensor(digits.y_train[:10]))
    # training inputs: zero mean per component and average second moment R, by construction (float32 rounding)
    xt = task.x_train.double()
    assert float(xt.pow(2).mean()) == pytest.approx(R, rel=1e-5)
    assert float(xt.mean(dim=0).abs().max()) < 1e-5
    # the test images share m and s; their second moment is R up to sampling (450 images: measured 2% off)
    assert float(task.x_test.double().pow(2).mean()) == pytest.approx(R, rel=0.1)


def test_task_bad_input(digits):
    with pytest.raises(mftrnn.DomainError, match="T_pad"):
        SequentialDigits(digits, T_pad=-1)
    with pytest.raises(mftrnn.DomainError, match="R must be > 0"):
        SequentialDigits(digits, R=0.0)
    with pytest.raises(mftrnn.DomainError, match="n_train"):
        SequentialDigits(digits, n_train=10**6)


def test_pytorch_default_hyperparameters_match_nn_rnn():
    """sigma_w^2 = 1/3, sigma_v^2 = N_in/(3N), sigma_b^2 = 2/(3N) for torch.nn.RNN's U(-1/sqrt N, 1/sqrt N).

    N = 300, N_in = 200: the sample mean of w^2 over n entries of a uniform law has relative std sqrt(0.8/n)
    (E w^4/(E w^2)^2 = 9/5): 0.3% for W, 0.4% for V, 4.6% for the 300 biases b_ih + b_hh (then
    sqrt(2/n) for a sum of two uniforms: 8%); tolerances 1.5%, 2% and 30% are > 3.5 standard errors.
    """
    torch.manual_seed(0)
    N, N_in = 300, 200
    rnn = torch.nn.RNN(N_in, N)
    hp = sd._pytorch_default_hyperparameters(N_in, N)
    assert float(rnn.weight_hh_l0.detach().double().pow(2).mean()) * N == pytest.approx(hp["sigma_w"] ** 2, rel=0.015)
    assert float(rnn.weight_ih_l0.detach().double().pow(2).mean()) * N_in == pytest.approx(hp["sigma_v"] ** 2,
                                                                                          rel=0.02)
    b = (rnn.bias_ih_l0 + rnn.bias_hh_l0).detach().double()
    assert float(b.pow(2).mean()) == pytest.approx(hp["sigma_b"] ** 2, rel=0.3)


# ------------------------------------------------------------------------------------------------------- training

@pytest.mark.parametrize("cell,init,kw", [
    ("vanilla", "critical", {}),
    ("minimal", "critical", {}),
    ("vanilla", "off-critical", dict(sigma_w=1.0, weights="gaussian")),
])
def test_tiny_run_learns_and_records_provenance(tmp_path, digits, cell, init, kw):
    out = tmp_path / "run.json"
    res = sd.train(tiny(cell=cell, init=init, **kw), out, data=digits, log=None, command="test")
    assert res["status"] == "finished"
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(res))
    curve = res["curve"]
    assert [p["step"] for p in curve] == list(range(0, 301, 50))
    assert curve[0]["test_accuracy"] < 0.3  # untrained: near chance
    assert res["final"]["test_accuracy"] > LEARNS
    assert all(math.isfinite(p["test_loss"]) for p in curve)
    prov = res["provenance"]
    for key in ("command", "commit", "dirty", "device", "torch", "started", "finished", "wall_time_s"):
        assert key in prov
    assert prov["command"] == "test" and prov["torch"] == torch.__version__ and prov["wall_time_s"] > 0
    hp, th = res["hyperparameters"], res["theory"]
    assert {"sigma_w", "sigma_v", "sigma_b", "mu_b", "R"} <= set(hp)
    assert set(th) == {"input", "blank"} and th["blank"]["R"] == 0.0
    assert 0 < th["input"]["chi"] and ("xi" in th["input"])
    if init == "critical" and cell == "vanilla":
        assert th["input"]["chi"] == pytest.approx(1.0, abs=1e-6)  # the initialiser's promise, via the engine


def test_theory_of_the_default_vanilla_init(tmp_path, digits):
    res = sd.train(tiny(cell="vanilla", init="default", steps=1, eval_every=1), tmp_path / "d.json", data=digits,
                   log=None)
    hp = res["hyperparameters"]
    assert hp["sigma_w"] == pytest.approx(3 ** -0.5) and hp["sigma_v"] == pytest.approx((8 / (3 * 32)) ** 0.5)
    fp = mftrnn.fixed_point("vanilla", sigma_w=hp["sigma_w"], sigma_v=hp["sigma_v"], sigma_b=hp["sigma_b"],
                            mu_b=0.0, R=1.0)
    assert res["theory"]["input"]["chi"] == pytest.approx(float(fp.chi), rel=1e-12)
    assert res["theory"]["input"]["chi"] < 0.5  # far from critical: the reason the default forgets


def _strip(curve):
    return [{k: v for k, v in p.items() if k != "wall_s"} for p in curve]


def test_checkpoint_resume_gives_the_uninterrupted_curve(tmp_path, digits, monkeypatch):
    cfg = tiny(cell="minimal", init="off-critical", sigma_w=1.0, mu_b=2.0, steps=120, eval_every=20)
    ref = sd.train(cfg, tmp_path / "ref.json", data=digits, log=None)
    out = tmp_path / "run.json"
    ckpt = sd.default_checkpoint_path(out)
    part = sd.train(cfg, out, data=digits, log=None, stop_after=50)  # "killed" between two evaluations
    assert part["status"] == "interrupted" and part["step"] == 50
    assert ckpt.exists() and not out.exists()
    done = sd.train(cfg, out, data=digits, log=None)
    assert done["status"] == "finished" and not ckpt.exists()
    assert _strip(done["curve"]) == _strip(ref["curve"])
    assert done["provenance"]["sessions"] == 2 and ref["provenance"]["sessions"] == 1

    # a finished run is not redone: no training step may happen
    def no_training(*a, **k):
        raise AssertionError("finished run was trained again")
    monkeypatch.setattr(sd, "_loss", no_training)
    again = sd.train(cfg, out, data=digits, log=None)
    assert again == json.loads(out.read_text())
    # ... and another configuration does not silently overwrite it
    with pytest.raises(mftrnn.MftrnnError, match="different configuration"):
        sd.train(dataclasses.replace(cfg, lr=1e-3), out, data=digits, log=None)


def test_checkpoint_of_another_configuration_is_refused(tmp_path, digits):
    cfg = tiny(cell="vanilla", init="default", steps=40, eval_every=20)
    out = tmp_path / "run.json"
    sd.train(cfg, out, data=digits, log=None, stop_after=10)
    with pytest.raises(mftrnn.MftrnnError, match="another configuration"):
        sd.train(dataclasses.replace(cfg, seed=1), out, data=digits, log=None)


def test_nan_loss_is_detected(tmp_path, digits, monkeypatch):
    real, calls = sd._loss, []

    def poisoned(logits, labels):
        calls.append(1)
        loss = real(logits, labels)
        return loss * float("nan") if len(calls) == 3 else loss
    monkeypatch.setattr(sd, "_loss", poisoned)
    out = tmp_path / "nan.json"
    with pytest.raises(mftrnn.ConvergenceError, match="diverged at step 2: training loss is nan"):
        sd.train(tiny(cell="vanilla", init="default"), out, data=digits, log=None)
    res = json.loads(out.read_text())
    assert res["status"] == "diverged" and res["diverged"]["step"] == 2
    assert not sd.default_checkpoint_path(out).exists()


def test_infinite_gradient_is_detected(tmp_path, digits, monkeypatch):
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, c: real(p, c) * float("inf"))
    with pytest.raises(mftrnn.ConvergenceError, match="gradient norm is inf"):
        sd.train(tiny(cell="minimal", init="default"), tmp_path / "g.json", data=digits, log=None)


@pytest.mark.parametrize("kw,needle", [
    (dict(cell="gru"), "unknown cell"),
    (dict(init="he"), "unknown init"),
    (dict(weights="uniform"), "unknown weights"),
    (dict(init="default", weights="orthogonal"), "does not apply"),
    (dict(init="off-critical"), "needs an explicit sigma_w"),
    (dict(init="off-critical", sigma_w=-1.0), "sigma_w must be >= 0"),
    (dict(init="off-critical", sigma_w=float("nan")), "finite"),
    (dict(sigma_w=1.0), "chooses sigma_w and sigma_v"),
    (dict(cell="minimal", mu_b=3.0), "chooses mu_b"),
    (dict(T_pad=-2), "T_pad"),
    (dict(hidden=0), "hidden"),
    (dict(steps=2.5), "steps"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(dataset="cifar"), "unknown data set"),
    (dict(device="tpu"), "device"),
])
def test_bad_config(kw, needle):
    with pytest.raises(mftrnn.MftrnnError, match=needle):
        tiny(**kw).validated()


# ------------------------------------------------------------------------------------------- sweep, plot and CLI

def test_sweep_configs_cover_the_comparison():
    cfgs = sd.sweep_configs("tiny")
    labels = [c.label() for c in cfgs]
    assert len(set(c.filename() for c in cfgs)) == len(cfgs) == 9
    assert "vanilla default" in labels and "minimal default" in labels
    for cell in sd.CELLS:
        for w in sd.WEIGHTS:
            assert f"{cell} critical {w}" in labels
    crit = sd._critical_hyperparameters(tiny(cell="vanilla"))
    off = sorted(c.sigma_w for c in cfgs if c.cell == "vanilla" and c.init == "off-critical")
    assert off == pytest.approx([0.5 * crit["sigma_w"], 2.0 * crit["sigma_w"]], rel=1e-5)
    assert all(c.mu_b == 0.0 for c in cfgs if c.cell == "minimal" and c.init == "off-critical")


def test_plot_curves(tmp_path, digits):
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    for init, kw in (("default", {}), ("critical", dict(weights="gaussian"))):
        sd.train(tiny(cell="vanilla", init=init, steps=20, eval_every=10, **kw),
                 tmp_path / f"{init}.json", data=digits, log=None)
    ax = sd.plot_curves(tmp_path)
    lines = [ln for ln in ax.get_lines() if ln.get_label() != "chance"]
    assert len(lines) == 2 and list(lines[0].get_xdata()) == [0, 10, 20]
    assert {ln.get_label() for ln in lines} == {"vanilla default", "vanilla critical gaussian"}
    plt.close(ax.figure)


def test_steps_to_accuracy_and_summary(tmp_path, digits):
    curve = [{"step": 0, "test_accuracy": 0.1}, {"step": 10, "test_accuracy": 0.6}, {"step": 20, "test_accuracy": 0.5},
             {"step": 30, "test_accuracy": 0.85}]
    assert sd.steps_to_accuracy({"curve": curve}, 0.5) == 10
    assert sd.steps_to_accuracy({"curve": curve}, 0.8) == 30
    assert sd.steps_to_accuracy({"curve": curve}, 0.9) is None
    res = sd.train(tiny(cell="minimal", init="default", steps=20, eval_every=10), tmp_path / "m.json", data=digits,
                   log=None)
    (row,) = sd.summary(tmp_path)
    assert row["label"] == "minimal default" and row["final_accuracy"] == res["final"]["test_accuracy"]
    assert row["best_accuracy"] == max(p["test_accuracy"] for p in res["curve"])
    assert row["chi_input"] == res["theory"]["input"]["chi"] and "steps_to_0.8" in row


def _assert_one_line_error(rc, err):
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mftrnn: error: ") and "Traceback" not in err, err


@pytest.mark.parametrize("argv", [
    ["--cell", "lstm", "--init", "default"],
    ["--cell", "vanilla", "--init", "default", "--weights", "orthogonal"],
    ["--cell", "vanilla", "--init", "critical", "--T-pad", "-3"],
    ["--cell", "vanilla", "--init", "off-critical"],
    ["--cell", "vanilla", "--init", "critical", "--lr", "nan"],
    ["--cell", "vanilla"],
    ["--cell", "vanilla", "--init", "default", "--preset", "huge"],
    ["--cell", "vanilla", "--init", "default", "--out-dir", "x"],
    ["--sweep", "tiny"],
    ["--sweep", "tiny", "--out-dir", "DIR", "--cell", "vanilla"],
    ["--sweep", "nope", "--out-dir", "DIR"],
    ["--sweep", "tiny", "--out-dir", "DIR", "--seeds", "0,x"],
    ["--cell", "vanilla", "--init", "default", "--dataset", "mnist"],  # no data in the empty folder
])
def test_cli_one_line_errors(tmp_path, capsys, no_network, argv):
    argv = [a.replace("DIR", str(tmp_path)) for a in argv]
    if "--sweep" not in argv and "--out-dir" not in argv:
        argv += ["--out", str(tmp_path / "r.json")]
    rc = main(["digits", "--preset", "tiny", "--data-dir", str(tmp_path / "none"), *argv]
              if "--preset" not in argv and "--sweep" not in argv else
              ["digits", "--data-dir", str(tmp_path / "none"), *argv])
    _, err = capsys.readouterr()
    _assert_one_line_error(rc, err)
    assert not (tmp_path / "r.json").exists()


def test_cli_bad_output_paths(tmp_path, capsys):
    for out in (tmp_path / "r.txt", tmp_path / "missing" / "r.json"):
        rc = main(["digits", "--preset", "tiny", "--cell", "vanilla", "--init", "default", "--out", str(out)])
        _, err = capsys.readouterr()
        _assert_one_line_error(rc, err)


def test_cli_single_run_and_rerun(tmp_path, capsys):
    out = tmp_path / "v.json"
    argv = ["digits", "--preset", "tiny", "--cell", "vanilla", "--init", "critical", "--weights", "gaussian",
            "--steps", "30", "--eval-every", "10", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["provenance"]["command"].startswith("mftrnn digits --preset tiny")
    assert res["config"]["weights"] == "gaussian" and res["config"]["steps"] == 30
    assert "finished" in first
    assert main(argv[:-3] + ["--out", str(out)]) == 0  # rerun: skipped, same file
    assert "already done" in capsys.readouterr().out
    assert json.loads(out.read_text()) == res
