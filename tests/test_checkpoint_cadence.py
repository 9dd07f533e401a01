"""``--checkpoint-every`` has one syntax and one meaning in ``mftrnn lm`` and ``mftrnn digits`` (issue 16): a wall
time (``60``, ``60s``, ``5min``, ``1h``; a bare number is seconds) or a number of optimizer steps (``500steps``),
parsed by one function (:func:`mftrnn.experiments.harness.parse_checkpoint_every`) and resolved for both ``train``
functions by :func:`mftrnn.experiments.harness.checkpoint_cadence`; and both commands read floating-point options
with one function (:func:`mftrnn._validate.float_argument`).
"""
from __future__ import annotations

import math

import pytest
import torch

import mftrnn
from mftrnn import _validate
from mftrnn.cli import app
from mftrnn.cli.app import main
from mftrnn.experiments import harness, lm
from mftrnn.experiments import seqdigits as sd
from mftrnn.experiments.data import Corpus
from mftrnn.experiments.harness import CheckpointEvery, checkpoint_cadence


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    return sd.load_sklearn_digits()


def tiny(**kw) -> sd.DigitsConfig:
    return sd.DigitsConfig(**{**sd.PRESETS["tiny"], "cell": "vanilla", "init": "default", **kw})


def toy_corpus(n=3000, V=12) -> Corpus:
    """A deterministic 12-word cycle with jumps (enough for a few batches of a toy language model)."""
    ids = torch.tensor([(7 * t + t // 5) % V for t in range(n)], dtype=torch.int64)
    vocab = [f"w{i}" for i in range(V)]
    return Corpus(name="toy", vocab=vocab, stoi={w: i for i, w in enumerate(vocab)}, train=ids,
                  valid=ids[:600].clone(), test=ids[:600].clone())


def toy_config(**kw) -> lm.LMConfig:
    base = dict(cell="lstm", corpus="ptb", hidden_size=8, num_layers=1, batch_size=8, eval_batch_size=8, bptt=10,
                lr=1.0, clip=0.25, epochs=1, init_range=0.1)
    return lm.LMConfig(**{**base, **kw}).validate()


# ---------------------------------------------------------------------------------------- one parser

CASES = {"90": CheckpointEvery(seconds=90.0), "90s": CheckpointEvery(seconds=90.0),
         "1.5min": CheckpointEvery(seconds=90.0), "1h": CheckpointEvery(seconds=3600.0),
         "0": CheckpointEvery(seconds=0.0), "7steps": CheckpointEvery(steps=7),
         "7 batches": CheckpointEvery(steps=7)}


@pytest.mark.parametrize("text", sorted(CASES))
def test_both_commands_pass_the_same_cadence(text, tmp_path, monkeypatch, capsys):
    """What each command hands to its ``train``, resolved by the one resolver, is the same cadence."""
    seen = {}

    def fake_digits_train(config, out, **kw):
        seen["digits"] = checkpoint_cadence(kw.get("checkpoint_every"), kw.get("checkpoint_every_s"))
        return {"status": "finished", "final": {"test_accuracy": 0.5}, "provenance": {"wall_time_s": 0.0}}

    def fake_lm_train(config, **kw):
        seen["lm"] = checkpoint_cadence(kw.get("checkpoint_every"), kw.get("checkpoint_every_s"))
        return {}

    monkeypatch.setattr(sd, "train", fake_digits_train)
    monkeypatch.setattr(lm, "train", fake_lm_train)
    monkeypatch.setattr(lm, "load_lm_corpus", lambda *a, **k: toy_corpus())
    assert main(["digits", "--preset", "tiny", "--cell", "vanilla", "--init", "default", "--quiet",
                 "--out", str(tmp_path / "d.json"), "--checkpoint-every", text]) == 0
    assert main(["lm", "lstm", "--preset", "tiny", "--no-progress", "--out", str(tmp_path / "l.json"),
                 "--checkpoint-every", text]) == 0
    capsys.readouterr()
    assert seen["digits"] == seen["lm"] == CASES[text]


def test_resolver():
    assert checkpoint_cadence() == CheckpointEvery()
    assert checkpoint_cadence(default=CheckpointEvery(seconds=60.0)) == CheckpointEvery(seconds=60.0)
    assert checkpoint_cadence(5) == checkpoint_cadence("5steps") == CheckpointEvery(steps=5)
    assert checkpoint_cadence(5, 30.0) == CheckpointEvery(steps=5, seconds=30.0)
    assert checkpoint_cadence(None, 0) == CheckpointEvery(seconds=0.0)
    assert str(CheckpointEvery(steps=5, seconds=30.0)) == "5 steps or 30 s"
    c = CheckpointEvery(steps=5, seconds=30.0)
    assert [c.due(k, 0.0) for k in (4, 5, 10)] == [False, True, True] and c.due(4, 30.0)
    for bad in (0, -3, 2.5, True, "soon", "-1", "nan", "inf", "0steps", "2.5steps"):
        with pytest.raises(mftrnn.MftrnnError, match="checkpoint_every|--checkpoint-every"):
            checkpoint_cadence(bad)
    with pytest.raises(mftrnn.MftrnnError, match="wall time already"):
        checkpoint_cadence("5min", 10.0)


# ---------------------------------------------------------------------------------------- same meaning

def _record(monkeypatch, module, position):
    """Replace ``module.save_checkpoint`` by a recorder of ``position(snapshot)`` that still saves."""
    real, steps = module.save_checkpoint, []

    def save(path, obj):
        steps.append(position(obj))
        return real(path, obj)

    monkeypatch.setattr(module, "save_checkpoint", save)
    return steps


def test_steps_mean_optimizer_steps_in_both(tmp_path, digits, monkeypatch):
    """``Nsteps``: a checkpoint after every N optimizer steps (not at the end, which writes the result), in digits
    (steps of the run, between evaluations too) as in lm (batches of the epoch)."""
    steps = _record(monkeypatch, sd, lambda obj: obj["step"])
    cfg = tiny(steps=20, eval_every=10)
    for k, cadence in enumerate(("3steps", 3)):
        del steps[:]
        sd.train(cfg, tmp_path / f"d{k}.json", data=digits, log=None, checkpoint_every=cadence)
        assert steps == [3, 6, 9, 12, 15, 18]
    del steps[:]
    sd.train(cfg, tmp_path / "d-hour.json", data=digits, log=None, checkpoint_every="1h")
    assert steps == []  # a 20-step run takes far less than an hour

    batches = _record(monkeypatch, lm, lambda obj: (obj["epoch"], obj["batch"]))
    corpus = toy_corpus()
    for k, cadence in enumerate(("4steps", 4)):
        del batches[:]
        lm.train(toy_config(max_batches=10), corpus=corpus, out=tmp_path / f"l{k}.json", progress=False, log=None,
                 checkpoint_every=cadence)
        assert batches == [(0, 4), (0, 8), (1, 0)]  # within the epoch, then the epoch's own checkpoint


class Crash(Exception):
    pass


def test_digits_resumes_from_a_checkpoint_between_evaluations(tmp_path, digits, monkeypatch):
    cfg = tiny(cell="minimal", steps=30, eval_every=10)
    ref = sd.train(cfg, tmp_path / "ref.json", data=digits, log=None)
    real, calls = sd.save_checkpoint, [0]

    def save_then_crash(path, obj):
        real(path, obj)
        calls[0] += 1
        if calls[0] == 2:  # killed right after the checkpoint at step 14 (not an evaluation step)
            raise Crash

    monkeypatch.setattr(sd, "save_checkpoint", save_then_crash)
    out = tmp_path / "run.json"
    with pytest.raises(Crash):
        sd.train(cfg, out, data=digits, log=None, checkpoint_every=7)
    monkeypatch.setattr(sd, "save_checkpoint", real)
    ck = harness.load_checkpoint(sd.default_checkpoint_path(out))
    assert ck["step"] == 14
    done = sd.train(cfg, out, data=digits, log=None, checkpoint_every=7)
    strip = lambda c: [{k: v for k, v in p.items() if k != "wall_s"} for p in c]  # noqa: E731
    assert strip(done["curve"]) == strip(ref["curve"]) and done["provenance"]["sessions"] == 2


@pytest.mark.parametrize("value", ["-1", "nan", "soon", "0steps", "1.5steps", "10parsecs"])
def test_bad_cadence_is_one_line_before_any_work(value, tmp_path, capsys):
    for argv in (["digits", "--preset", "tiny", "--cell", "vanilla", "--init", "default"],
                 ["lm", "lstm", "--preset", "tiny"]):
        rc = main(argv + ["--out", str(tmp_path / "r.json"), f"--checkpoint-every={value}"])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("mftrnn: error: --checkpoint-every"), err
        assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- one float parser

def test_one_float_parser():
    assert app._float is lm._float is _validate.float_argument
    f = _validate.float_argument
    assert f("1e-3") == 1e-3 and f("-2") == -2.0 and math.isnan(f("nan")) and f("-inf") == -math.inf
    import argparse
    with pytest.raises(argparse.ArgumentTypeError, match="not a number: 'abc'"):
        f("abc")


@pytest.mark.parametrize("option,value", [("--lr", "inf"), ("--lr", "nan"), ("--dropout", "nan"),
                                          ("--clip", "-inf"), ("--sigma-w", "nan")])
def test_lm_non_finite_options_are_one_line(option, value, tmp_path, capsys, monkeypatch):
    """A non-finite value reaches the configuration's own check: one line naming the field (exit 1), before the
    corpus is read."""
    monkeypatch.setattr(lm, "load_lm_corpus", lambda *a, **k: pytest.fail("the corpus was read"))
    cell = "minimal" if option == "--sigma-w" else "lstm"
    rc = main(["lm", cell, "--preset", "tiny", "--out", str(tmp_path / "r.json"), option, value])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    field = option[2:].replace("-", "_")
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("mftrnn: error: ") and field in lines[0], err
