"""Word-level language modelling (mftrnn/lm.py, ``mftrnn lm``).

Every test uses small generated text (a Markov chain, below) or the WikiText-2 excerpt shipped with the
repository; none needs ``../shared/data``.

The toy corpus.  Tokens follow a first-order Markov chain on V = 16 words: word i is followed by i+1 (mod V)
with probability 0.8 and by 3i+2 (mod V) with probability 0.2, so the best possible model has a per-token
entropy of H = -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.500 nats (perplexity 1.65), while a model that ignores the
context cannot beat the unigram perplexity, ~16 here (the chain's stationary law is nearly uniform).
"Trains" therefore means a validation perplexity below a quarter of the unigram one (4.0): a margin that
only a model which has learnt the transitions can reach, yet far enough from the optimum that a small model
trained for a second passes it reliably (measured with these seeds: 1.8-1.9 for all four cells).  No model
can beat the chain's own entropy: on 2,000 validation tokens the optimal per-token loss 0.500 has a standard
error of sqrt(0.8*0.2*ln(4)^2/2000) = 0.012 nats, so a perplexity below exp(0.500 - 5*0.012) = 1.55 would
reveal a leak of the targets into the inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import pytest
import torch

import mftrnn
from mftrnn.experiments import lm
from mftrnn.cli.app import main
from mftrnn.experiments.data import Corpus, batchify

REPO = Path(__file__).resolve().parents[1]
V_TOY = 16


def toy_corpus(n_train: int = 12000, n_eval: int = 2000, seed: int = 0) -> Corpus:
    """Tokens of the Markov chain of the module docstring; vocabulary w0..w15."""
    g = torch.Generator().manual_seed(seed)

    def chain(n: int) -> torch.Tensor:
        jumps = torch.rand(n, generator=g) < 0.2
        out = torch.empty(n, dtype=torch.int64)
        w = 0
        for t in range(n):
            w = (3 * w + 2) % V_TOY if jumps[t] else (w + 1) % V_TOY
            out[t] = w
        return out

    vocab = [f"w{i}" for i in range(V_TOY)]
    return Corpus(name="toy", vocab=vocab, stoi={w: i for i, w in enumerate(vocab)},
                  train=chain(n_train), valid=chain(n_eval), test=chain(n_eval))


TOY = toy_corpus()


def toy_config(cell: str = "lstm", **kw) -> lm.LMConfig:
    base = dict(cell=cell, corpus="ptb", hidden_size=32, num_layers=1, batch_size=16, eval_batch_size=10,
                bptt=10, lr=5.0, clip=0.25, epochs=2, schedule="plateau", lr_decay=4.0, init_range=0.1)
    base.update(kw)
    return lm.LMConfig(**base).validate()


# ------------------------------------------------------------------------------------------- the model

@pytest.mark.parametrize("cell", lm.CELLS)
@pytest.mark.parametrize("layers,emb,tie", [(1, None, False), (2, 12, False), (2, None, True)])
def test_shapes_and_parameter_count(cell, layers, emb, tie):
    N, V, T, B = 10, 23, 7, 3
    model = lm.LanguageModel(cell, V, N, num_layers=layers, emb_size=emb, dropout=0.2, tie_weights=tie)
    tokens = torch.randint(0, V, (T, B))
    logits, hidden = model(tokens)
    assert logits.shape == (T, B, V)
    hs = hidden if isinstance(hidden, tuple) else (hidden,)
    assert len(hs) == (2 if cell == "lstm" else 1)
    assert all(h.shape == (layers, B, N) for h in hs)
    # the state is carried: feeding the second half with the state of the first equals one pass (eval mode)
    model.eval()
    full, _ = model(tokens)
    first, h = model(tokens[:4])
    second, _ = model(tokens[4:], h)
    torch.testing.assert_close(torch.cat([first, second]), full, rtol=1e-5, atol=1e-6)
    counts = lm.count_parameters(cell, N, V, layers, emb, tie)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["recurrent"] == sum(p.numel() for p in model.rnn.parameters())
    assert counts["total"] == counts["embedding"] + counts["recurrent"] + counts["decoder"]


def test_weight_tying():
    model = lm.build_model(toy_config("minimal", tie_weights=True), V_TOY)
    assert model.decoder.weight is model.encoder.weight
    untied = lm.build_model(toy_config("minimal"), V_TOY)
    n_tied = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in untied.parameters()) - n_tied == V_TOY * 32
    logits, _ = model(torch.randint(0, V_TOY, (5, 2)))
    logits.sum().backward()
    assert model.encoder.weight.grad is not None and model.encoder.weight.grad.abs().sum() > 0
    with pytest.raises(mftrnn.MftrnnError, match="tie_weights needs emb_size == hidden_size"):
        toy_config("lstm", tie_weights=True, emb_size=8)


def test_minimal_uses_library_initialisation():
    init = lm.MinimalInit(sigma_w=1.5, sigma_v=0.7, sigma_b=0.0, mu_b=2.5, sigma_phi=3.0)
    model = lm.build_model(toy_config("minimal", hidden_size=400, minimal=init), V_TOY)
    assert model.rnn.hyperparameters["mu_b"] == 2.5 and model.rnn.hyperparameters["sigma_w"] == 1.5
    p = {k: v.detach() for k, v in model.rnn.layer_parameters(0).items()}
    assert torch.all(p["b"] == 2.5)  # sigma_b = 0
    # N^2 = 160000 entries: relative std of the mean square is sqrt(2)/N = 0.35%; allow 5 sigma
    N = 400
    assert float((p["W"] ** 2).mean() * N) == pytest.approx(1.5 ** 2, rel=5 * math.sqrt(2) / N)
    # Phi is (N, E) with E = N: the same statistics
    assert float((p["Phi"] ** 2).mean() * N) == pytest.approx(3.0 ** 2, rel=5 * math.sqrt(2) / N)
    # the embedding and decoder are uniform in [-a, a]
    assert float(model.encoder.weight.detach().abs().max()) <= 0.1


def test_uniform_decoder_gives_log_v():
    # a decoder with zero weights and bias predicts the uniform distribution: loss = ln V exactly
    model = lm.build_model(toy_config("gru"), V_TOY)
    with torch.no_grad():
        model.decoder.weight.zero_()
        model.decoder.bias.zero_()
    data = batchify(TOY.valid, 10)
    assert lm.evaluate(model, data, bptt=10) == pytest.approx(math.log(V_TOY), rel=1e-6)


def test_unigram_perplexity_by_hand():
    vocab = ["a", "b", "c"]
    c = Corpus(name="x", vocab=vocab, stoi={w: i for i, w in enumerate(vocab)},
               train=torch.tensor([0, 0, 0, 1]), valid=torch.tensor([2]), test=torch.tensor([0, 2]))
    # counts + 1 = (4, 2, 1), total 7
    assert lm.unigram_perplexity(c, "test") == pytest.approx(math.exp(-(math.log(4 / 7) + math.log(1 / 7)) / 2))
    assert lm.unigram_perplexity(c, "valid") == pytest.approx(7.0)


def test_restrict_vocab():
    vocab = ["x", "<unk>", "y", "z", "w"]
    train = torch.tensor([0, 2, 2, 3, 3, 3, 4, 1, 1, 1, 1])   # counts x1 unk4 y2 z3 w1
    c = Corpus(name="x", vocab=vocab, stoi={w: i for i, w in enumerate(vocab)},
               train=train, valid=torch.tensor([0, 4, 3]), test=torch.tensor([2]))
    r = lm.restrict_vocab(c, 3)   # keep the 2 most frequent words (z, y) and <unk>, in the old order
    assert r.vocab == ["<unk>", "y", "z"]
    assert r.decode(r.train) == ["<unk>", "y", "y", "z", "z", "z", "<unk>", "<unk>", "<unk>", "<unk>", "<unk>"]
    assert r.decode(r.valid) == ["<unk>", "<unk>", "z"]
    assert lm.restrict_vocab(c, 5) is c
    tie = lm.restrict_vocab(c, 4)  # x and w both occur once: the first occurrence (x) is kept
    assert tie.vocab == ["x", "<unk>", "y", "z"]


def test_match_hidden_size_brute_force():
    V, L = 1000, 2
    for cell in lm.CELLS:
        for what in ("total", "recurrent"):
            target = lm.count_parameters("lstm", 50, V, L)[what]
            n = lm.match_hidden_size(cell, target, V, L, what=what)
            best = min(range(1, 400), key=lambda h: (abs(lm.count_parameters(cell, h, V, L)[what] - target), h))
            assert n == best
    assert lm.match_hidden_size("lstm", lm.count_parameters("lstm", 50, V, L)["total"], V, L) == 50
    # the minimalRNN's layers are smaller than the LSTM's (3N^2 vs 8N^2 per layer at N_in = N)
    assert lm.match_hidden_size("minimal", lm.count_parameters("lstm", 200, 10000, 2)["recurrent"], 10000, 2,
                                what="recurrent") > 300


def test_learning_rate_schedules():
    step = toy_config(schedule="step", lr=20.0, lr_decay=2.0, decay_start=4)
    assert [lm.learning_rate(step, e) for e in range(7)] == [20, 20, 20, 20, 10, 5, 2.5]
    plateau = toy_config(schedule="plateau", lr=20.0, lr_decay=4.0)
    assert lm.learning_rate(plateau, 0) == 20.0
    assert lm.learning_rate(plateau, 1, current=20.0, valid_loss=5.0, best_valid_loss=None) == 20.0
    assert lm.learning_rate(plateau, 2, current=20.0, valid_loss=4.0, best_valid_loss=4.5) == 20.0
    assert lm.learning_rate(plateau, 3, current=20.0, valid_loss=4.6, best_valid_loss=4.5) == 5.0


def test_config_validation_and_presets():
    for name in lm.PRESETS:
        assert lm.preset(name, "minimal").preset == name
    small = lm.preset("small", "lstm")
    assert (small.hidden_size, small.num_layers, small.bptt, small.lr * 1.0, small.clip) == (200, 2, 20, 20.0, 0.25)
    with pytest.raises(mftrnn.MftrnnError, match="unknown preset"):
        lm.preset("huge")
    with pytest.raises(mftrnn.MftrnnError, match="unknown cell"):
        lm.preset("small", "rnn")
    for bad in (dict(lr=-1.0), dict(dropout=1.0), dict(hidden_size=0), dict(clip=float("nan")),
                dict(lr_decay=0.5), dict(schedule="cosine")):
        with pytest.raises(mftrnn.MftrnnError):
            toy_config(**bad)
    cfg = toy_config("minimal", minimal=lm.MinimalInit(mu_b=1.0))
    assert lm.LMConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ------------------------------------------------------------------------------------------ training

@pytest.mark.parametrize("cell", lm.CELLS)
def test_each_cell_trains(cell):
    torch.set_num_threads(1)
    cfg = toy_config(cell, lr=2.0 if cell == "vanilla" else 5.0)
    res = lm.train(cfg, corpus=TOY, progress=False, log=None)
    unigram = lm.unigram_perplexity(TOY, "valid")
    assert 14 < unigram < 17   # the chain's stationary law is nearly uniform over 16 words
    first, last = res["history"][0], res["history"][-1]
    assert 1.55 < last["valid_ppl"] < 0.25 * unigram, (cell, [h["valid_ppl"] for h in res["history"]])
    assert last["train_loss"] < first["train_loss"]
    assert res["status"] == "finished" and res["test_ppl"] < 0.25 * lm.unigram_perplexity(TOY, "test")
    assert res["parameters"]["total"] == lm.count_parameters(cell, 32, V_TOY, 1)["total"]


def _strip(res: dict) -> dict:
    """Result without the timing and provenance fields (which differ between runs)."""
    hist = [{k: v for k, v in h.items() if k not in ("train_seconds", "eval_seconds", "tokens_per_s")}
            for h in res["history"]]
    return dict(history=hist, curve=res["curve"], test_loss=res["test_loss"], best_epoch=res["best_epoch"],
                parameters=res["parameters"], config=res["config"])


class Crash(Exception):
    pass


@pytest.mark.parametrize("cell", ["minimal", "lstm"])
def test_resume_reproduces_uninterrupted_run(tmp_path, cell):
    torch.set_num_threads(1)
    # two layers and dropout: the RNG state must be restored too; 74 batches per epoch, checkpoints every 5
    cfg = toy_config(cell, num_layers=2, dropout=0.3, epochs=3, bptt=10)
    ref = lm.train(cfg, corpus=TOY, out=tmp_path / "ref.json", checkpoint_every=5, progress=False, log=None)

    out = tmp_path / "run.json"
    ckpt = tmp_path / "run.json.ckpt"
    crashes = [(0, 13), (1, 0), (1, 41), (2, 73)]   # mid-epoch, first batch, mid-epoch, last batch

    def crash_at(epoch_batch):
        def hook(e, b, loss):
            if (e, b) == epoch_batch:
                raise Crash
        return hook

    for where in crashes:
        with pytest.raises(Crash):
            lm.train(cfg, corpus=TOY, out=out, checkpoint_every=5, progress=False, log=None,
                     on_batch=crash_at(where))
        assert ckpt.exists()
    res = lm.train(cfg, corpus=TOY, out=out, checkpoint_every=5, progress=False, log=None)
    assert _strip(res) == _strip(ref)              # bit-identical losses after four interruptions
    assert res["provenance"]["sessions"] == len(crashes) + 1
    assert not ckpt.exists()                       # removed when finished
    assert lm.read_result(out)["status"] == "finished"

    def must_not_train(e, b, loss):
        raise AssertionError("a finished run was redone")

    again = lm.train(cfg, corpus=TOY, out=out, progress=False, log=None, on_batch=must_not_train)
    assert again == res


def test_evaluate_checkpoint(tmp_path):
    """A kept checkpoint re-evaluates to the result's test loss exactly with the run's streams; one stream (the
    published protocol) gives another, close, value; bad input is refused."""
    torch.set_num_threads(1)
    cfg = toy_config("lstm", epochs=2)
    ck = tmp_path / "run.ckpt"
    res = lm.train(cfg, corpus=TOY, checkpoint=ck, keep_checkpoint=True, progress=False, log=None)
    again = lm.evaluate_checkpoint(ck, corpus=TOY)
    assert again["eval_batch_size"] == cfg.eval_batch_size and again["epoch"] == res["best_epoch"]
    assert again["loss"] == pytest.approx(res["test_loss"], rel=1e-12)
    one = lm.evaluate_checkpoint(ck, eval_batch_size=1, corpus=TOY)
    assert one["loss"] != again["loss"] and one["loss"] == pytest.approx(again["loss"], rel=0.05)
    with pytest.raises(mftrnn.MftrnnError, match="split must be one of"):
        lm.evaluate_checkpoint(ck, split="dev", corpus=TOY)
    with pytest.raises(mftrnn.MftrnnError, match="eval_batch_size must be"):
        lm.evaluate_checkpoint(ck, eval_batch_size=0, corpus=TOY)


def test_result_file_provenance_and_mismatch(tmp_path):
    out = tmp_path / "r.json"
    cfg = toy_config("gru", epochs=1, max_batches=10)
    lm.train(cfg, corpus=TOY, out=out, progress=False, log=None, command="mftrnn lm gru ...")
    res = json.loads(out.read_text())
    prov = res["provenance"]
    for key in ("command", "git_commit", "git_dirty", "device", "torch", "date_utc_start", "date_utc_end",
                "wall_time_s", "threads"):
        assert key in prov
    assert prov["command"] == "mftrnn lm gru ..." and prov["torch"] == torch.__version__
    assert prov["device"].startswith("cpu")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", prov["date_utc_end"])
    assert res["history"][0]["train_tokens"] == 10 * 16 * 10
    assert res["corpus"]["vocab_size"] == V_TOY and res["corpus"]["tokens"]["train"] == 12000
    with pytest.raises(mftrnn.MftrnnError, match="another configuration"):
        lm.train(cfg.replace(lr=1.0), corpus=TOY, out=out, progress=False, log=None)
    lm.train(cfg.replace(lr=1.0), corpus=TOY, out=out, progress=False, log=None, overwrite=True)
    assert json.loads(out.read_text())["config"]["lr"] == 1.0
    # a checkpoint of another configuration is refused
    ck = tmp_path / "c.ckpt"

    def crash(e, b, loss):
        if b == 5:
            raise Crash

    with pytest.raises(Crash):
        lm.train(cfg, corpus=TOY, checkpoint=ck, checkpoint_every=2, progress=False, log=None, on_batch=crash)
    with pytest.raises(mftrnn.MftrnnError, match="another configuration"):
        lm.train(cfg.replace(seed=1), corpus=TOY, checkpoint=ck, progress=False, log=None)


def test_divergence_is_detected(tmp_path):
    # a learning rate of 1e4 without clipping blows the loss up within a few steps
    cfg = toy_config("lstm", lr=1e4, clip=0.0, epochs=1)
    with pytest.raises(mftrnn.ConvergenceError, match=r"training diverged: .* at epoch 1, batch \d+"):
        lm.train(cfg, corpus=TOY, progress=False, log=None)


def test_nan_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    cfg = toy_config("gru", epochs=2)
    out, ckpt = tmp_path / "r.json", tmp_path / "r.json.ckpt"
    ref = lm.train(cfg, corpus=TOY, progress=False, log=None)

    real_ce = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    n_batches = len(range(0, 12000 // 16 - 1, 10))   # 75 training batches per epoch
    bad = n_batches + 25                              # the 25th batch of epoch 2

    class NanF:  # fault injection: one training loss is NaN
        def __getattr__(self, name):
            return getattr(torch.nn.functional, name)

        @staticmethod
        def cross_entropy(*args, **kw):
            loss = real_ce(*args, **kw)
            if kw.get("reduction", "mean") == "mean":
                calls["n"] += 1
                if calls["n"] == bad:
                    return loss * float("nan")
            return loss

    monkeypatch.setattr(lm, "F", NanF())
    with pytest.raises(mftrnn.ConvergenceError) as info:
        lm.train(cfg, corpus=TOY, out=out, checkpoint_every=10, progress=False, log=None)
    msg = str(info.value)
    assert "loss = nan at epoch 2, batch 25 " in msg
    assert f"last good checkpoint (epoch 2, batch 20) is kept in {ckpt}" in msg
    ck = torch.load(ckpt, weights_only=True)
    assert (ck["epoch"], ck["batch"]) == (1, 20)
    assert all(torch.isfinite(v).all() for v in ck["model"].values())
    assert lm.read_result(out)["status"] == "diverged" and lm.read_result(out)["error"] == msg
    # a rerun reports the recorded failure without training
    with pytest.raises(mftrnn.ConvergenceError, match="recorded in .*nothing redone"):
        lm.train(cfg, corpus=TOY, out=out, progress=False, log=None)
    # without the fault, a retry from the kept checkpoint completes the run exactly as if nothing happened
    monkeypatch.setattr(lm, "F", torch.nn.functional)
    res = lm.train(cfg, corpus=TOY, out=out, checkpoint_every=10, progress=False, log=None, overwrite=True)
    assert _strip(res) == _strip(ref)


# ------------------------------------------------------------------------------------ excerpt and CLI

def test_excerpt_checksums_and_readme():
    folder = lm.EXCERPT_DIR
    assert folder == REPO / "mftrnn" / "experiments" / "corpora" / "wikitext-2-excerpt"
    readme = (folder / "README.md").read_text()
    for name, digest in lm.EXCERPT_SHA256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
        assert re.search(rf"{re.escape(name)}.*{digest}", readme), name
    assert "CC BY-SA 3.0" in readme and "Merity" in readme
    corpus = lm.load_excerpt()
    assert corpus.vocab[-1] == "<unk>" or "<unk>" in corpus.stoi
    assert corpus.train.numel() == sum(len(line.split()) + 1 for line in
                                       (folder / "train.txt").read_text().splitlines())


def test_excerpt_corruption_is_detected(tmp_path):
    for name in lm.EXCERPT_SHA256:
        (tmp_path / name).write_bytes((lm.EXCERPT_DIR / name).read_bytes())
    (tmp_path / "valid.txt").write_bytes((lm.EXCERPT_DIR / "valid.txt").read_bytes()[:-1])
    with pytest.raises(mftrnn.DataError, match="checksum mismatch.*valid.txt"):
        lm.load_excerpt(tmp_path)
    with pytest.raises(mftrnn.DataError, match="not found"):
        lm.load_excerpt(tmp_path / "nowhere")


def _one_line_error(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 1, (argv, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mftrnn: error: ") and "Traceback" not in err, err
    return lines[0]


def test_cli_errors_are_one_line(capsys, tmp_path):
    assert "unknown cell 'rnn'" in _one_line_error(capsys, ["lm", "rnn"])
    assert "unknown preset 'huge'" in _one_line_error(capsys, ["lm", "lstm", "--preset", "huge"])
    assert "tie_weights needs" in _one_line_error(capsys, ["lm", "lstm", "--emb", "10", "--tie-weights"])
    assert "minimal cell only" in _one_line_error(capsys, ["lm", "lstm", "--mu-b", "2"])
    assert "lr must be" in _one_line_error(capsys, ["lm", "gru", "--lr", "-1"])
    assert "unknown corpus" in _one_line_error(capsys, ["lm", "gru", "--corpus", "enwik8"])
    msg = _one_line_error(capsys, ["lm", "gru", "--corpus", "ptb", "--data-dir", str(tmp_path / "none")])
    assert "ptb data not found" in msg and "MFTRNN_DATA" in msg
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _one_line_error(capsys, ["lm", "gru", "--device", "cuda"])


def test_cli_runs_resumes_and_skips(capsys, tmp_path):
    out = tmp_path / "tiny.json"
    argv = ["lm", "minimal", "--preset", "tiny", "--hidden", "8", "--max-batches", "6", "--epochs", "2",
            "--out", str(out), "--no-progress", "--mu-b", "1.5"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "test ppl" in text
    res = lm.read_result(out)
    assert res["status"] == "finished" and len(res["history"]) == 2
    assert res["config"]["minimal"]["mu_b"] == 1.5 and res["config"]["corpus"] == "wikitext-2-excerpt"
    assert res["provenance"]["command"] == "mftrnn " + " ".join(argv)
    assert res["corpus"]["vocab_size"] == 2000
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().out
    # equal parameter count: --match-params picks the minimalRNN width of an LSTM's count
    out2 = tmp_path / "eq.json"
    assert main(["lm", "minimal", "--preset", "tiny", "--hidden", "8", "--max-batches", "2", "--match-params",
                 "lstm", "--match-what", "recurrent", "--out", str(out2), "--no-progress"]) == 0
    capsys.readouterr()
    r2 = lm.read_result(out2)
    target = lm.count_parameters("lstm", 8, 2000, 1)["recurrent"]
    n = r2["config"]["hidden_size"]
    step = (lm.count_parameters("minimal", n + 1, 2000, 1)["recurrent"]
            - lm.count_parameters("minimal", n, 2000, 1)["recurrent"])
    assert n > 8 and abs(r2["parameters"]["recurrent"] - target) <= step / 2
