"""The run bookkeeping that the training experiments share (:class:`mftrnn.experiments.harness.TrainingRun`).

A toy experiment (a linear regression by SGD, a few milliseconds of work a step) drives the class through what a
real one does: refusals before work, a finished result returned as is, a checkpoint stopped and resumed to the same
curve, the sessions' clocks.  One real experiment (:mod:`mftrnn.experiments.seizure`) resumes a checkpoint in the
format written before the CPU time was recorded.
"""
import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch

import mftrnn
from mftrnn.experiments import harness, seizure as sz
from mftrnn.experiments.harness import TrainingRun

FORMAT = "mftrnn.toy/1"
CLEAN = {"commit": "a" * 40, "dirty": False}


@dataclasses.dataclass(frozen=True)
class Toy:
    steps: int = 12
    eval_every: int = 4
    seed: int = 0
    lr: float = 0.05

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def label(self) -> str:
        return f"toy s{self.seed}"


def load_toy(paths):
    return harness.load_result_files(paths, (FORMAT,), f"a toy result (format {FORMAT!r})")


def toy_train(config, out, *, stop_after=None, force=False, git=CLEAN, require_clean=False, every="5steps",
              work=20000, poison_at=None, meter=None):
    """A toy experiment written as the real ones are.  ``meter`` (a dict) receives ``"steps_cpu"``, the process CPU
    time spent inside the training steps of this call, measured around them; ``poison_at``: a non-finite loss at
    that step (the run diverges)."""
    out, ckpt = harness.run_files(out)
    every = harness.parse_checkpoint_every(every)
    if git is not None:
        harness.refuse_unclean(git, require_clean)
    run = TrainingRun(config, out, ckpt, git=git, require_clean=require_clean, command="toy", log=None)
    with run.lock():
        existing = run.existing_result(load_toy, force)
        if existing is not None:
            return existing
        model = torch.nn.Linear(3, 1)
        torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
        opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        gen = torch.Generator().manual_seed(config.seed)
        target = torch.tensor([[1.0, -2.0, 0.5]])

        def load(st):
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            gen.set_state(st["rng"])

        run.resume(("model", "optimizer", "rng"), load)
        run.start(lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": gen.get_state()})

        def evaluate():
            with torch.no_grad():
                return {"test_loss": float(((model.weight - target) ** 2).sum())}

        def result(status, diverged=None):
            return {"format": FORMAT, "config": config.to_dict(), "status": status, "curve": run.curve,
                    "diverged": diverged, "provenance": run.provenance({"command": run.command})}

        if run.step == 0 and not run.curve:
            run.curve.append({"step": 0, "train_loss": None, **evaluate(), "wall_s": round(run.wall(), 3)})
        steps_cpu = 0.0
        while run.step < config.steps:
            stopped = run.interrupt(stop_after)
            if stopped is not None:
                break
            c = time.process_time()
            x = torch.randn(8, 3, generator=gen)
            loss = ((model(x) - x @ target.T) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sum(i * i for i in range(work))  # a fixed amount of CPU work
            steps_cpu += time.process_time() - c
            lv = float("nan") if run.step == poison_at else float(loss.detach())
            if lv != lv:
                run.diverge(result("diverged", {"step": run.step, "message": "nan"}), "training loss is nan")
            run.step += 1
            run.add_loss(lv)
            if run.step % config.eval_every == 0 or run.step == config.steps:
                run.curve.append({"step": run.step, "train_loss": run.train_loss(), **evaluate(),
                                  "wall_s": round(run.wall(), 3)})
            run.maybe_checkpoint(every)
        if meter is not None:
            meter["steps_cpu"] = meter.get("steps_cpu", 0.0) + steps_cpu
        if run.step < config.steps:
            return stopped
        return run.finish(result("finished"))


def strip(curve):
    return [{k: v for k, v in p.items() if k != "wall_s"} for p in curve]


def timed(f, *a, **k):
    """``f(*a, **k)`` and the process CPU time the call took (an upper bound of what it can have recorded)."""
    c = time.process_time()
    out = f(*a, **k)
    return out, time.process_time() - c


# ------------------------------------------------------------------------------------------------ clocks, resume

def test_stop_and_resume_gives_the_straight_curve_and_sums_the_clocks(tmp_path):
    cfg = Toy()
    meter_ref, meter = {}, {}
    ref, ref_cpu = timed(toy_train, cfg, tmp_path / "ref.json", meter=meter_ref)
    part, cpu1 = timed(toy_train, cfg, tmp_path / "run.json", stop_after=6, meter=meter)
    ckpt = harness.default_checkpoint_path(tmp_path / "run.json")
    assert part["status"] == "interrupted" and part["step"] == 6 and ckpt.exists()
    st = harness.load_checkpoint(ckpt)
    assert set(st) == set(harness.RUN_CHECKPOINT_KEYS) | {"commits", "cpu_time_s", "model", "optimizer", "rng"}
    done, cpu2 = timed(toy_train, cfg, tmp_path / "run.json", meter=meter)
    assert strip(done["curve"]) == strip(ref["curve"]) and not ckpt.exists()
    assert [p["step"] for p in done["curve"]] == [0, 4, 8, 12]
    assert done["curve"][-1]["test_loss"] < 0.5 * done["curve"][0]["test_loss"]  # it does train
    for res, lower, upper, sessions in ((ref, meter_ref["steps_cpu"], ref_cpu, 1),
                                        (done, meter["steps_cpu"], cpu1 + cpu2, 2)):
        p = res["provenance"]
        assert p["sessions"] == sessions and len(p["session_commits"]) == sessions and p["git_dirty"] is False
        # CPU time: at least what the training steps measurably took (both sessions), at most what the train
        # calls took (they hold every session whole); 1 ms of slack for the rounding to ms
        assert lower - 1e-3 <= p["cpu_time_s"] <= upper + 1e-3, (lower, p["cpu_time_s"], upper)
        # one busy thread cannot spend more CPU time than wall time (threads x wall bounds any process)
        assert 0 <= p["cpu_time_s"] <= p["wall_time_s"] * torch.get_num_threads() + 1e-2
    # the first session's time is in the checkpoint and carried into the total
    assert st["cpu_time_s"] > 0 and done["provenance"]["cpu_time_s"] >= st["cpu_time_s"]
    assert done["provenance"]["wall_time_s"] >= st["elapsed_s"]


def test_an_old_checkpoint_without_cpu_time_resumes_and_records_none(tmp_path):
    cfg = Toy()
    ref = toy_train(cfg, tmp_path / "ref.json")
    out = tmp_path / "run.json"
    ckpt = harness.default_checkpoint_path(out)
    toy_train(cfg, out, stop_after=5)
    st = harness.load_checkpoint(ckpt)
    st.pop("cpu_time_s")  # the format before the CPU time was recorded
    harness.save_checkpoint(ckpt, st)
    toy_train(cfg, out, stop_after=10)  # the unknown stays unknown through a further session ...
    assert harness.load_checkpoint(ckpt)["cpu_time_s"] is None
    done = toy_train(cfg, out)
    assert strip(done["curve"]) == strip(ref["curve"])
    p = done["provenance"]
    assert p["sessions"] == 3 and p["cpu_time_s"] is None and p["wall_time_s"] > 0  # ... never a partial sum


@pytest.mark.parametrize("edit,needle", [
    (dict(cpu_time_s=-1.0), r"cpu_time_s -1\.0 is not a number of seconds >= 0"),
    (dict(cpu_time_s="3 s"), r"cpu_time_s '3 s' is not a number of seconds >= 0"),
    (dict(step=99), r"step 99 lies outside this run of 12 steps"),
    (dict(curve=[]), r"at step 6 the curve must hold 2 evaluation\(s\), it holds 0"),
    (dict(commits="x"), r"malformed session record"),
])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, edit, needle):
    out = tmp_path / "run.json"
    ckpt = harness.default_checkpoint_path(out)
    toy_train(Toy(), out, stop_after=6)
    harness.save_checkpoint(ckpt, {**harness.load_checkpoint(ckpt), **edit})
    with pytest.raises(mftrnn.MftrnnError, match=rf"checkpoint .*run\.ckpt\.pt is damaged \({needle}\); delete "
                                                 rf".*run\.ckpt\.pt to restart the run from step 0") as exc:
        toy_train(Toy(), out)
    assert "\n" not in str(exc.value) and not out.exists()


def test_a_checkpoint_that_does_not_fit_the_model_is_refused(tmp_path):
    out = tmp_path / "run.json"
    ckpt = harness.default_checkpoint_path(out)
    toy_train(Toy(), out, stop_after=6)
    st = harness.load_checkpoint(ckpt)
    harness.save_checkpoint(ckpt, dict(st, model={"weight": torch.zeros(2, 2)}))
    with pytest.raises(mftrnn.MftrnnError, match=r"damaged \(it does not fit the model: .*\); delete"):
        toy_train(Toy(), out)
    harness.save_checkpoint(ckpt, dict(st, config=Toy(seed=1).to_dict()))
    with pytest.raises(mftrnn.MftrnnError, match="belongs to another configuration"):
        toy_train(Toy(), out)


# -------------------------------------------------------------------------------- existing results and force

def test_a_finished_result_is_returned_as_it_is_and_force_redoes_it(tmp_path):
    out = tmp_path / "r.json"
    first = toy_train(Toy(), out)
    stamp = out.stat().st_mtime_ns
    again = toy_train(Toy(), out, work=10 ** 9)  # would take minutes if it trained
    assert again == json.loads(out.read_text()) == first and out.stat().st_mtime_ns == stamp
    with pytest.raises(mftrnn.MftrnnError, match="holds a run with a different configuration; choose another "
                                                 r"output \(--out\) or pass --force"):
        toy_train(Toy(seed=1), out)
    assert json.loads(out.read_text()) == first
    other = toy_train(Toy(seed=1), out, force=True)
    assert other["config"]["seed"] == 1 and other["curve"] != first["curve"]
    assert load_toy([out])[0] == other


def test_a_file_that_is_not_a_result_needs_force(tmp_path):
    out = tmp_path / "r.json"
    out.write_text('{"format": "something else"}')
    with pytest.raises(mftrnn.DataError, match=r"not a toy result .*; pass --force \(force=True\) to replace it"):
        toy_train(Toy(), out)
    assert toy_train(Toy(), out, force=True)["status"] == "finished"


def test_a_diverged_run_is_recorded_and_not_redone(tmp_path):
    out = tmp_path / "r.json"
    with pytest.raises(mftrnn.ConvergenceError, match=r"toy s0: training diverged at step 3: training loss is nan; "
                                                      r"result written to"):
        toy_train(Toy(), out, poison_at=3, every="1steps")
    saved = json.loads(out.read_text())
    assert saved["status"] == "diverged" and saved["diverged"] == {"step": 3, "message": "nan"}
    assert not harness.default_checkpoint_path(out).exists()
    with pytest.raises(mftrnn.ConvergenceError, match=r"diverged at step 3: nan \[recorded in .*nothing redone"):
        toy_train(Toy(), out)
    assert toy_train(Toy(), out, force=True)["status"] == "finished"


# ---------------------------------------------------------------------------------------------- require clean

@pytest.mark.parametrize("git,needle", [({"commit": None, "dirty": None}, "not a git checkout"),
                                        ({"commit": "b" * 40, "dirty": True}, "uncommitted changes")])
def test_require_clean_refuses_an_unclean_checkout(tmp_path, git, needle):
    harness.refuse_unclean(git, False)  # only when asked
    with pytest.raises(mftrnn.MftrnnError, match=rf"--require-clean: .*{needle}"):
        toy_train(Toy(), tmp_path / "r.json", git=git, require_clean=True)
    assert list(tmp_path.iterdir()) == []  # refused before any work: not even a lock file


def test_require_clean_refuses_a_checkpoint_of_another_commit(tmp_path):
    out = tmp_path / "r.json"
    toy_train(Toy(), out, stop_after=6, git={"commit": "c" * 40, "dirty": False})
    with pytest.raises(mftrnn.MftrnnError, match=r"--require-clean: checkpoint .* was made at commit\(s\) "
                                                 r"\['cccccccccccc'\], this checkout is at aaaaaaaaaaaa"):
        toy_train(Toy(), out, require_clean=True)
    res = toy_train(Toy(), out)  # without require_clean it resumes, and says so
    assert [c["commit"][0] for c in res["provenance"]["session_commits"]] == ["c", "a"]


def test_seizure_require_clean_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(sz, "git_state", lambda: {"commit": "d" * 40, "dirty": True})
    with pytest.raises(mftrnn.MftrnnError, match="--require-clean: the checkout at dddddddddddd has uncommitted"):
        sz.train(sz.SeizureConfig(**TINY), tmp_path / "r.json", require_clean=True, log=None)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- a real experiment's old checkpoint

TINY = dict(cell="gru", init="default", T=30, burst_length=5, channels=4, steps=6, batch_size=4, eval_every=3,
            n_test=8)
#: the keys of a seizure checkpoint before the harness wrote the CPU time (its integrity record aside)
OLD_SEIZURE_KEYS = {"config", "step", "model", "optimizer", "batch_rng", "curve", "elapsed_s", "run_sum", "run_n",
                    "sessions", "started", "init", "commits"}


def test_seizure_resumes_a_checkpoint_of_the_old_format(tmp_path):
    cfg = sz.SeizureConfig(**TINY)
    ref = sz.train(cfg, tmp_path / "ref.json", log=None, command="test")
    out = tmp_path / "run.json"
    ckpt = harness.default_checkpoint_path(out)
    sz.train(cfg, out, stop_after=4, log=None, command="test")  # between two evaluations
    st = harness.load_checkpoint(ckpt)
    assert set(st) == OLD_SEIZURE_KEYS | {"cpu_time_s"}  # the old keys, unchanged, and one more
    st.pop("cpu_time_s")
    harness.save_checkpoint(ckpt, st)
    assert set(torch.load(ckpt, weights_only=True)) == OLD_SEIZURE_KEYS | {harness.INTEGRITY_KEY}
    done = sz.train(cfg, out, log=None, command="test")
    assert strip(done["curve"]) == strip(ref["curve"]) and not ckpt.exists()
    assert set(done) == set(ref) and set(done["provenance"]) == set(ref["provenance"])
    p, q = done["provenance"], ref["provenance"]
    assert p["sessions"] == 2 and len(p["session_commits"]) == 2 and p["cpu_time_s"] is None
    assert q["sessions"] == 1 and q["cpu_time_s"] >= 0
    assert q["cpu_time_s"] <= q["wall_time_s"] * torch.get_num_threads() + 0.05  # threads x wall, ms rounding
    assert json.loads(Path(out).read_text()) == done
