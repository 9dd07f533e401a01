"""Run safety of the experiments (``mftrnn lm``, ``mftrnn digits`` and their shared harness): fault tests.

* two runs on one output: the second is refused at once, naming the holder's output;
* runs killed (SIGKILL in a subprocess, or an exception raised inside a write) and resumed: nothing finished is
  lost, no temporary file is left, the result equals that of an uninterrupted run;
* damaged checkpoints (a flipped byte, a missing key, a position past the end) give one clear error that says
  which file to delete;
* configurations that cannot work are refused before any work: no training window, a bad checkpoint cadence, a
  missing or unwritable output folder, an unknown device; divergence in ``digits`` is detected as in ``lm``.

Everything is tiny: a 16-word Markov-chain corpus (as in ``tests/test_lm.py``), scikit-learn's 8x8 digits, the
shipped WikiText-2 excerpt for the command line; the subprocesses run one thread each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

import mftrnn
from mftrnn.cli.app import main
from mftrnn.experiments import bench_layers, harness, lm
from mftrnn.experiments import seqdigits as sd

REPO = Path(__file__).resolve().parents[1]

# Shared by this module and its subprocesses (exec'd in both), so that both build the very same corpus and run.
COMMON = r'''
import torch
from mftrnn.experiments import lm
from mftrnn.experiments.data import Corpus

def toy_corpus(n_train=6000, n_eval=1000, seed=0, V=16):
    g = torch.Generator().manual_seed(seed)
    def chain(n):
        jumps = torch.rand(n, generator=g) < 0.2
        out, w = torch.empty(n, dtype=torch.int64), 0
        for t in range(n):
            w = (3 * w + 2) % V if jumps[t] else (w + 1) % V
            out[t] = w
        return out
    vocab = [f"w{i}" for i in range(V)]
    return Corpus(name="toy", vocab=vocab, stoi={w: i for i, w in enumerate(vocab)},
                  train=chain(n_train), valid=chain(n_eval), test=chain(n_eval))

TOY = toy_corpus()

def toy_config(**kw):
    base = dict(cell="lstm", corpus="ptb", hidden_size=16, num_layers=1, batch_size=16, eval_batch_size=10,
                bptt=10, lr=5.0, clip=0.25, epochs=2, schedule="plateau", lr_decay=4.0, init_range=0.1)
    base.update(kw)
    return lm.LMConfig(**base).validate()
'''
_common: dict = {}
exec(COMMON, _common)  # the same definitions here
toy_corpus, TOY, toy_config = _common["toy_corpus"], _common["TOY"], _common["toy_config"]

CHILD = COMMON + r'''
import os, sys, time
torch.set_num_threads(1)
out, mode, arg = sys.argv[1], sys.argv[2], float(sys.argv[3])
if mode == "exit-in-write":  # die like SIGKILL in the middle of writing the checkpoint number `arg`
    real_save, calls = torch.save, [0]
    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == int(arg):
            f.write(b"PK\x03\x04 half a checkpoint")
            f.flush()
            os._exit(137)
        return real_save(obj, f, *a, **k)
    torch.save = save
def on_batch(e, b, loss):
    print(f"batch {e} {b}", flush=True)
    if mode == "slow":
        time.sleep(arg)
lm.train(toy_config(), corpus=TOY, out=out, checkpoint_every=1, progress=False, log=None, on_batch=on_batch,
         command="child")
print("done", flush=True)
'''


@pytest.fixture(autouse=True)
def one_thread():
    """Bit-for-bit equality with the subprocesses (one thread each) and fair sharing of a small machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _child(tmp_path: Path, out: Path, mode: str, arg: float = 0.0) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, str(script), str(out), mode, str(arg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=str(tmp_path), env=env)


def _wait_for_batches(proc: subprocess.Popen, n: int, timeout: float = 120.0) -> None:
    """Read the child's lines until it reports ``n`` optimizer steps."""
    t0, seen = time.monotonic(), 0
    while seen < n:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child ended early: {proc.stderr.read()}")
        if line.startswith("batch"):
            seen += 1
        assert time.monotonic() - t0 < timeout, "child too slow"


def _strip(res: dict) -> dict:
    """An lm result without timings and provenance."""
    hist = [{k: v for k, v in h.items() if k not in ("train_seconds", "eval_seconds", "tokens_per_s")}
            for h in res["history"]]
    return dict(history=hist, curve=res["curve"], test_loss=res["test_loss"], best_epoch=res["best_epoch"],
                config=res["config"], status=res["status"])


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _one_line(capsys, argv, rc=1) -> str:
    got = main(argv)
    out, err = capsys.readouterr()
    assert got == rc, (argv, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mftrnn: error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def lm_reference(tmp_path_factory):
    """The uninterrupted toy run."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ref") / "ref.json"
    return lm.train(toy_config(), corpus=TOY, out=out, checkpoint_every=1, progress=False, log=None)


@pytest.fixture(scope="module")
def digits():
    return sd.load_sklearn_digits()


def tiny(**kw) -> sd.DigitsConfig:
    return sd.DigitsConfig(**{**sd.PRESETS["tiny"], "cell": "vanilla", "init": "default", **kw})


# ------------------------------------------------------------------------------------- one output, one run

def test_second_run_on_the_same_output_is_refused(tmp_path, capsys, lm_reference):
    out = tmp_path / "run.json"
    child = _child(tmp_path, out, "slow", 0.05)
    try:
        _wait_for_batches(child, 3)
        t0 = time.perf_counter()
        with pytest.raises(mftrnn.MftrnnError, match=r"run\.json is in use by another run \(it writes .*run\.json; "
                                                     r"pid \d+") as info:
            lm.train(toy_config(lr=1.0), corpus=TOY, out=out, progress=False, log=None)
        assert time.perf_counter() - t0 < 5  # refused at once, before any work
        assert "choose another --out" in str(info.value)
        # through the command line: one line, exit status 1, the holder's output named
        msg = _one_line(capsys, ["lm", "lstm", "--preset", "tiny", "--max-batches", "2", "--out", str(out),
                                 "--no-progress"])
        assert f"{out} is in use by another run (it writes {out}; pid {child.pid} " in msg
        # its checkpoint is locked too: a run with another --out but the same --checkpoint is refused
        with pytest.raises(mftrnn.MftrnnError, match=r"run\.json\.ckpt is in use by another run"):
            lm.train(toy_config(), corpus=TOY, out=tmp_path / "other.json", checkpoint=tmp_path / "run.json.ckpt",
                     progress=False, log=None)
        assert not (tmp_path / "other.json").exists()
    finally:
        child.kill()
        child.wait()
    # the killed holder's lock is gone with it: the run resumes and ends as if uninterrupted
    res = lm.train(toy_config(), corpus=TOY, out=out, checkpoint_every=1, progress=False, log=None)
    assert _strip(res) == _strip(lm_reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.py", "run.json"]  # no lock, temp or checkpoint


def test_concurrent_digits_runs_in_threads(tmp_path, digits):
    out = tmp_path / "d.json"
    started, go = threading.Event(), threading.Event()
    results = {}

    def log(line):
        if "step 0" in line:
            started.set()
            go.wait(60)

    def first():
        results["first"] = sd.train(tiny(steps=20, eval_every=10), out, data=digits, log=log)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(60)
        with pytest.raises(mftrnn.MftrnnError, match=r"d\.json is in use by another run \(it writes .*d\.json"):
            sd.train(tiny(steps=20, eval_every=10, lr=1e-2), out, data=digits, log=None)
    finally:
        go.set()
        t.join()
    assert json.loads(out.read_text())["config"] == results["first"]["config"]
    assert results["first"]["status"] == "finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json"]


def test_runlock_nested_in_one_thread_and_released(tmp_path):
    p = tmp_path / "x.json"
    with harness.RunLock([p], output=p):
        with harness.RunLock([p, None], output=p):  # the same thread may lock again (CLI, then train)
            pass
        assert (tmp_path / ".x.json.lock").exists()
        assert json.loads((tmp_path / ".x.json.lock").read_text())["output"] == str(p)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------- killed runs, resumed

def test_sigkill_at_random_points_then_resume(tmp_path, lm_reference):
    out = tmp_path / "run.json"
    rng = random.Random(1234)
    for _ in range(2):
        child = _child(tmp_path, out, "fast")
        try:
            _wait_for_batches(child, rng.randrange(1, 30))
            time.sleep(rng.uniform(0.0, 0.05))  # anywhere: inside a checkpoint write, a result write, a step
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait()
        assert child.returncode == -signal.SIGKILL or child.returncode == 0
    # a kill inside a checkpoint write leaves a temporary file; make sure the next run meets one
    (tmp_path / ".run.json.ckpt.k1ll3d_x.tmp").write_bytes(b"half")
    (tmp_path / ".other.json.abcdefgh.tmp").write_bytes(b"someone else's")  # another destination: kept
    res = lm.train(toy_config(), corpus=TOY, out=out, checkpoint_every=1, progress=False, log=None)
    assert _strip(res) == _strip(lm_reference)
    assert _temps(tmp_path) == [".other.json.abcdefgh.tmp"]
    assert not (tmp_path / "run.json.ckpt").exists()


def test_death_inside_a_checkpoint_write_leaves_a_temp_that_the_next_run_removes(tmp_path, lm_reference):
    out = tmp_path / "run.json"
    child = _child(tmp_path, out, "exit-in-write", 7)  # dies writing the 7th checkpoint
    child.communicate(timeout=120)
    assert child.returncode == 137
    assert len([t for t in _temps(tmp_path) if t.startswith(".run.json.ckpt.")]) == 1  # the orphan
    ck = harness.load_checkpoint(tmp_path / "run.json.ckpt")  # the 6th checkpoint is intact
    assert (ck["epoch"], ck["batch"]) == (0, 6)
    res = lm.train(toy_config(), corpus=TOY, out=out, checkpoint_every=1, progress=False, log=None)
    assert _strip(res) == _strip(lm_reference)
    assert _temps(tmp_path) == []


class Crash(Exception):
    pass


def test_digits_exception_inside_writes_loses_nothing(tmp_path, digits, monkeypatch):
    cfg = tiny(cell="minimal", steps=60, eval_every=10)
    ref = sd.train(cfg, tmp_path / "ref.json", data=digits, log=None)
    out = tmp_path / "run.json"
    real_save, calls = torch.save, [0]
    for crash_at in (2, 4):  # the 2nd, then the 4th checkpoint write of the resumed run, raise half-way
        calls[0] = 0

        def save(obj, f, *a, **k):
            calls[0] += 1
            if calls[0] == crash_at:
                f.write(b"PK half")
                raise Crash
            return real_save(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", save)
        with pytest.raises(Crash):
            sd.train(cfg, out, data=digits, log=None, checkpoint_every_s=0)
        assert _temps(tmp_path) == [] and sd.default_checkpoint_path(out).exists() and not out.exists()
    monkeypatch.setattr(torch, "save", real_save)
    done = sd.train(cfg, out, data=digits, log=None, checkpoint_every_s=0)
    strip = lambda c: [{k: v for k, v in p.items() if k != "wall_s"} for p in c]  # noqa: E731
    assert strip(done["curve"]) == strip(ref["curve"]) and done["provenance"]["sessions"] == 3

    # a finished result survives a replacement that fails half-way (--force with another configuration)
    before = out.read_bytes()
    real_write = harness.atomic_write

    def failing_write(path, write):
        def half(fh):
            fh.write(b'{"format": "half')
            raise Crash
        return real_write(path, half)

    monkeypatch.setattr(harness, "atomic_write", failing_write)
    with pytest.raises(Crash):
        sd.train(dataclasses.replace(cfg, steps=20), out, data=digits, log=None, force=True)
    assert out.read_bytes() == before and _temps(tmp_path) == []


# -------------------------------------------------------------------------------------- damaged checkpoints

def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor's data (a zip member stored uncompressed)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(raw))


def _lm_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    out, ck = tmp_path / "r.json", tmp_path / "r.json.ckpt"

    def crash(e, b, loss):
        if b == 5:
            raise Crash

    with pytest.raises(Crash):
        lm.train(toy_config(), corpus=TOY, out=out, checkpoint_every=2, progress=False, log=None, on_batch=crash)
    assert ck.exists()
    return out, ck


def _resave(path: Path, edit, keep_record: bool = True) -> None:
    """Rewrite a checkpoint with ``edit(state)`` applied, keeping (or dropping) its integrity record."""
    state = torch.load(path, weights_only=True)
    record = state.pop(harness.INTEGRITY_KEY)
    edit(state)
    if keep_record:
        state[harness.INTEGRITY_KEY] = record
    torch.save(state, path)


@pytest.mark.parametrize("damage,needle", [
    (_flip_tensor_byte, r"fails its CRC check"),
    (lambda p: _resave(p, lambda s: s["model"]["decoder.bias"].mul_(1.001)), r"does not match the sha256"),
    (lambda p: _resave(p, lambda s: s.pop("optimizer")), r"key\(s\) optimizer missing"),
    (lambda p: _resave(p, lambda s: s.pop("rng"), keep_record=False), r"missing key\(s\) rng"),
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), r"not a readable checkpoint"),
])
def test_damaged_lm_checkpoint(tmp_path, damage, needle):
    out, ck = _lm_checkpoint(tmp_path)
    damage(ck)
    with pytest.raises(mftrnn.MftrnnError, match=rf"checkpoint .*r\.json\.ckpt is damaged \(.*{needle}.*\); "
                                                 rf"delete .*r\.json\.ckpt to restart the run from its first batch"):
        lm.train(toy_config(), corpus=TOY, out=out, progress=False, log=None)
    assert ck.exists() and not out.exists()


def test_lm_checkpoint_past_the_end(tmp_path):
    out, ck = _lm_checkpoint(tmp_path)
    state = harness.load_checkpoint(ck)
    harness.save_checkpoint(ck, dict(state, epoch=5, batch=0))  # a consistent file, but epoch 6 of a 2-epoch run
    n = lm._windows(TOY.train.numel(), 16, 10)
    with pytest.raises(mftrnn.MftrnnError, match=rf"damaged \(its position, epoch 6 batch 0, lies past the end of "
                                                 rf"this run \(2 epoch\(s\) of {n} batches\)\); delete"):
        lm.train(toy_config(), corpus=TOY, out=out, progress=False, log=None)


def _digits_checkpoint(tmp_path, digits, cfg) -> tuple[Path, Path]:
    out = tmp_path / "d.json"
    sd.train(cfg, out, data=digits, log=None, stop_after=25)
    return out, sd.default_checkpoint_path(out)


@pytest.mark.parametrize("damage,needle", [
    (_flip_tensor_byte, r"fails its CRC check"),
    (lambda p: _resave(p, lambda s: s.pop("batch_rng")), r"key\(s\) batch_rng missing"),
    (lambda p: harness.save_checkpoint(p, dict(harness.load_checkpoint(p), step=500)),
     r"step 500 lies outside this run of 60 steps"),
    (lambda p: harness.save_checkpoint(p, dict((s := harness.load_checkpoint(p)), curve=s["curve"][:1])),
     r"at step 25 the curve must hold 3 evaluation\(s\), it holds 1"),
])
def test_damaged_digits_checkpoint(tmp_path, digits, damage, needle):
    cfg = tiny(steps=60, eval_every=10)
    out, ck = _digits_checkpoint(tmp_path, digits, cfg)
    damage(ck)
    with pytest.raises(mftrnn.MftrnnError, match=rf"checkpoint .*\.d\.ckpt\.pt is damaged \(.*{needle}.*\); "
                                                 rf"delete .*\.d\.ckpt\.pt to restart the run from step 0"):
        sd.train(cfg, out, data=digits, log=None)
    assert not out.exists()
    ck.unlink()  # the advice works
    assert sd.train(cfg, out, data=digits, log=None)["status"] == "finished"


def test_damaged_checkpoint_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "t.json"
    argv = ["lm", "lstm", "--preset", "tiny", "--hidden", "8", "--max-batches", "6", "--out", str(out),
            "--checkpoint-every", "2steps", "--no-progress"]
    ck = Path(str(out) + ".ckpt")
    cfg = lm.preset("tiny", "lstm", hidden_size=8, max_batches=6)

    def crash(e, b, loss):
        if b == 4:
            raise Crash

    with pytest.raises(Crash):
        lm.train(cfg, out=out, checkpoint_every=2, progress=False, log=None, on_batch=crash)
    _flip_tensor_byte(ck)
    msg = _one_line(capsys, argv)
    assert f"checkpoint {ck} is damaged" in msg and f"delete {ck} to restart the run" in msg
    ck.unlink()
    assert main(argv) == 0
    assert lm.read_result(out)["status"] == "finished"


# ------------------------------------------------------------------------- refused before any work

def test_zero_token_run_is_refused(tmp_path, capsys, monkeypatch):
    with pytest.raises(mftrnn.MftrnnError, match=r"nothing to train on: .* 6,000 tokens, i\.e\. 1 per column "
                                                 r"at batch size 5000.* lower --batch-size"):
        lm.train(toy_config(batch_size=5000), corpus=TOY, out=tmp_path / "z.json", progress=False, log=None)
    with pytest.raises(mftrnn.MftrnnError, match=r"nothing to evaluate: the valid split .* lower --eval-batch-size"):
        lm.train(toy_config(eval_batch_size=999), corpus=TOY, progress=False, log=None)
    out = tmp_path / "cli.json"
    msg = _one_line(capsys, ["lm", "lstm", "--preset", "tiny", "--batch-size", "100000", "--max-batches", "2",
                             "--out", str(out), "--no-progress"])
    assert "nothing to train on" in msg
    assert list(tmp_path.iterdir()) == []


def test_digits_divergence_is_detected_like_lm(tmp_path, digits, capsys):
    out = tmp_path / "big-lr.json"
    with pytest.raises(mftrnn.ConvergenceError, match=r"training diverged at step \d+: training loss [0-9.e+]+ > "
                                                      r"3 x max\(ln 10, initial test loss [0-9.]+\) = [0-9.]+; "
                                                      r"result written .* status 'diverged'; lower the learning rate"):
        sd.train(tiny(lr=1e6), out, data=digits, log=None)
    res = json.loads(out.read_text())
    assert res["status"] == "diverged" and res["diverged"]["step"] >= 1
    # a rerun reports the recorded failure without training (as lm does); --force runs it again
    with pytest.raises(mftrnn.ConvergenceError, match=r"recorded in .*nothing redone; --force"):
        sd.train(tiny(lr=1e6), out, data=digits, log=None)
    msg = _one_line(capsys, ["digits", "--preset", "tiny", "--cell", "vanilla", "--init", "default", "--lr", "1e6",
                             "--out", str(tmp_path / "cli.json"), "--quiet"])
    assert "training diverged" in msg and json.loads((tmp_path / "cli.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf"])
def test_bad_checkpoint_every_digits(tmp_path, capsys, value):
    out = tmp_path / "r.json"
    msg = _one_line(capsys, ["digits", "--preset", "tiny", "--cell", "vanilla", "--init", "default", "--out",
                             str(out), f"--checkpoint-every={value}"])
    assert "--checkpoint-every" in msg and "seconds" in msg
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "often", "0steps", "2.5steps", "10parsecs"])
def test_bad_checkpoint_every_lm(tmp_path, capsys, value):
    out = tmp_path / "r.json"
    msg = _one_line(capsys, ["lm", "lstm", "--preset", "tiny", "--out", str(out), f"--checkpoint-every={value}"])
    assert "--checkpoint-every" in msg
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_every_units_and_api_checks(digits, tmp_path):
    P = harness.parse_checkpoint_every
    assert P("60") == P("60s") == P("1min") == harness.CheckpointEvery(seconds=60.0)
    assert P("1h").seconds == 3600 and P("0").seconds == 0
    assert P("500steps") == P("500 batches") == harness.CheckpointEvery(steps=500)
    for bad in (dict(checkpoint_every_s=-1.0), dict(checkpoint_every_s=float("nan"))):
        with pytest.raises(mftrnn.MftrnnError, match="checkpoint_every_s"):
            sd.train(tiny(), tmp_path / "x.json", data=digits, log=None, **bad)
        with pytest.raises(mftrnn.MftrnnError, match="checkpoint_every_s"):
            lm.train(toy_config(), corpus=TOY, progress=False, log=None, **bad)
    with pytest.raises(mftrnn.MftrnnError, match="checkpoint_every must be an integer >= 1"):
        lm.train(toy_config(), corpus=TOY, progress=False, log=None, checkpoint_every=0)


def _unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    try:  # root may write anywhere but on a read-only file system such as /sys
        (Path("/sys") / ".mftrnn-probe").write_bytes(b"")
    except OSError:
        return Path("/sys")
    pytest.skip("no unwritable folder for root on this machine")


def test_outputs_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    def no_work(*a, **k):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(lm, "load_lm_corpus", no_work)
    monkeypatch.setattr(sd, "load_dataset", no_work)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    ro = _unwritable_folder(tmp_path)
    cases = [(tmp_path / "missing" / "x.json", "does not exist; create it or choose another --out"),
             (a_file / "x.json", "is not a folder"),
             (ro / "x.json", "cannot write in the folder of")]
    for out, needle in cases:
        msg = _one_line(capsys, ["lm", "lstm", "--preset", "tiny", "--out", str(out)])
        assert needle in msg, msg
        msg = _one_line(capsys, ["digits", "--preset", "tiny", "--cell", "vanilla", "--init", "default",
                                 "--out", str(out)])
        assert needle in msg, msg
    msg = _one_line(capsys, ["lm", "lstm", "--preset", "tiny", "--out", str(tmp_path / "ok.json"),
                             "--checkpoint", str(a_file / "sub" / "c.ckpt")])
    assert "cannot create the folder" in msg and "of the checkpoint" in msg and "--checkpoint" in msg
    assert not (tmp_path / "missing").exists()  # nothing was created
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("file.txt", "ro")) == []


def test_an_explicit_checkpoint_folder_is_created(tmp_path):
    # the committed results record commands with --checkpoint /tmp/lm-ckpt/...: they must run after /tmp is wiped
    ck = tmp_path / "scratch" / "c.ckpt"
    res = lm.train(toy_config(epochs=1, max_batches=3), corpus=TOY, checkpoint=ck, progress=False, log=None)
    assert res["status"] == "finished" and (tmp_path / "scratch").is_dir() and not ck.exists()


def test_unknown_device_is_one_line(tmp_path, capsys, digits):
    assert "unknown device 'foo'" in _one_line(capsys, ["lm", "gru", "--preset", "tiny", "--device", "foo",
                                                        "--out", str(tmp_path / "x.json")])
    rc = bench_layers.main(["--device", "foo", "--repeat", "1", "--warmup", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: unknown device 'foo'")
    with pytest.raises(mftrnn.MftrnnError, match="unknown device 'cuda:x'"):
        sd.train(tiny(device="cuda:x"), tmp_path / "d.json", data=digits, log=None)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ messages for command-line users

def test_corrupt_result_file_is_replaced_with_overwrite(tmp_path, capsys, digits):
    out = tmp_path / "t.json"
    out.write_text("{ not json")
    argv = ["lm", "lstm", "--preset", "tiny", "--hidden", "8", "--max-batches", "3", "--out", str(out),
            "--no-progress"]
    msg = _one_line(capsys, argv)
    assert "cannot read result file" in msg and "pass --overwrite" in msg
    assert main(argv + ["--overwrite"]) == 0
    capsys.readouterr()
    assert lm.read_result(out)["status"] == "finished"

    d = tmp_path / "d.json"
    d.write_text("[]")
    dargv = ["digits", "--preset", "tiny", "--cell", "vanilla", "--init", "default", "--steps", "10",
             "--eval-every", "5", "--out", str(d), "--quiet"]
    msg = _one_line(capsys, dargv)
    assert "is not a seqdigits result" in msg and "pass --force" in msg
    assert main(dargv + ["--force"]) == 0
    assert json.loads(d.read_text())["status"] == "finished"


def test_data_messages_name_the_command_line_options(tmp_path, capsys):
    msg = _one_line(capsys, ["lm", "gru", "--corpus", "ptb", "--data-dir", str(tmp_path / "none"),
                             "--out", str(tmp_path / "x.json")])
    assert "--data-dir" in msg and "--download" in msg
    assert "call load_corpus" not in msg
