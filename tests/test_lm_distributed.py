"""Data-parallel language-model training (torchrun, DistributedDataParallel, gloo on the CPU).

Two CPU processes train the tiny preset for a few batches; after every optimizer step their parameters must equal
those of a single-process run on the same batches.  Tolerance: float32 parameters of order 0.1 updated with
learning rate 5; the two runs differ only in the order of additions (each process averages its half of the
tokens, DDP averages the halves), about 1e-7 relative per step, so after 4 steps an absolute 2e-6 is a margin of
more than 10 over what rounding gives and far below a real difference (a wrong gradient scale or split moves
parameters by about lr x gradient ~ 1e-2).
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import os, sys, torch
    from mftrnn.experiments import lm
    out_dir, mode = sys.argv[1], sys.argv[2]  # mode: steps (snapshots after every step), crash, or resume
    built = []
    original = lm.build_model
    def build(config, V):
        m = original(config, V)
        built.append(m)
        return m
    lm.build_model = build
    snaps = []
    def on_batch(epoch, batch, loss):
        snaps.append({k: v.detach().clone() for k, v in built[0].state_dict().items()})
        if mode == "crash" and batch == 1:
            raise SystemExit(3)  # after the checkpoint of batch 2, on every rank
    cfg = lm.preset("tiny", "lstm", max_batches=4, epochs=1)
    lm.train(cfg, out=out_dir + "/r.json", progress=False, log=None, on_batch=on_batch,
             checkpoint_every=2 if mode == "steps" else 1, keep_checkpoint=mode != "steps")
    rank = int(os.environ.get("RANK", 0))
    torch.save(snaps, f"{out_dir}/snaps-{rank}.pt")
    torch.save({k: v.detach().clone() for k, v in built[0].state_dict().items()}, out_dir + "/final.pt")
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(tmp_path, *folders):
    """The training script, the environment of its processes and empty output folders."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MASTER_ADDR="127.0.0.1")
    dirs = [tmp_path / f for f in folders]
    for d in dirs:
        d.mkdir()
    return script, env, dirs


def _run(args, cwd, env):
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_two_processes_step_like_one(tmp_path):
    script, env, (one, two) = _setup(tmp_path, "one", "two")
    _run([sys.executable, str(script), str(one), "steps"], tmp_path, env)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
          "--master-port", str(_free_port()), str(script), str(two), "steps"], tmp_path, env)
    ref = torch.load(one / "snaps-0.pt")
    assert len(ref) == 4
    for rank in (0, 1):
        snaps = torch.load(two / f"snaps-{rank}.pt")
        assert len(snaps) == len(ref)
        for step, (a, b) in enumerate(zip(ref, snaps)):
            for k in a:
                diff = float((a[k] - b[k]).abs().max())
                assert diff < 2e-6, (rank, step, k, diff)
    # the parameters moved (the comparison is not vacuous)
    first = torch.load(one / "snaps-0.pt")[0]
    assert any(float((first[k] - ref[-1][k]).abs().max()) > 1e-3 for k in first)
    # rank 0 wrote the one result; it records both processes and the single-process numbers
    r1, r2 = json.loads((one / "r.json").read_text()), json.loads((two / "r.json").read_text())
    assert r2["provenance"]["processes"] == 2 and r1["provenance"]["processes"] == 1
    assert r2["history"][0]["train_tokens"] == r1["history"][0]["train_tokens"]
    assert r2["test_ppl"] == pytest.approx(r1["test_ppl"], rel=1e-5)
    assert not list(two.glob("*.ckpt"))  # rank 0 removed the finished run's checkpoint


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")
def test_checkpoint_of_two_processes_resumes_in_one(tmp_path):
    """A two-process run stopped after its second batch resumes in one process from rank 0's checkpoint (the
    carried state of the whole batch) and ends where an uninterrupted single-process run ends."""
    script, env, (ref, run) = _setup(tmp_path, "ref", "run")
    _run([sys.executable, str(script), str(ref), "resume"], tmp_path, env)
    crashed = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                              "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script),
                              str(run), "crash"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert crashed.returncode != 0 and (run / "r.json.ckpt").exists()
    ck = torch.load(run / "r.json.ckpt", weights_only=False)
    assert (ck["epoch"], ck["batch"], ck["world_size"]) == (0, 2, 2)
    assert ck["hidden"][0].shape[1] == lm_batch_size()  # the whole batch's state, gathered by rank 0
    _run([sys.executable, str(script), str(run), "resume"], tmp_path, env)
    a, b = torch.load(ref / "final.pt"), torch.load(run / "final.pt")
    for k in a:
        assert float((a[k] - b[k]).abs().max()) < 2e-6, k
    res = json.loads((run / "r.json").read_text())
    assert res["provenance"]["sessions"] == 2


def lm_batch_size() -> int:
    from mftrnn.experiments import lm
    return lm.PRESETS["tiny"]["batch_size"]
