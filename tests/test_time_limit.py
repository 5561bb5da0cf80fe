"""--time-limit: the duration parser, the schedule re-planned mid-run (engine/sched.py), and a run that ends at its
limit with a checkpoint, the final kNN and a schedule that reached its end, from a config file."""
import json

import numpy as np
import pytest
import torch

from tests.helpers import TINY, read_csv, run_here


def test_durations_parse_and_bad_ones_are_one_line():
    import flags
    from engine.errors import UsageError
    assert [flags.duration(t) for t in ("90s", "15m", "1h30m", "1.5h", "2", 3)] == [90, 900, 5400, 5400, 120, 180]
    assert flags.duration(None) is None
    for bad in ("abc", "0", "m", "-5m", "15 min"):
        with pytest.raises(UsageError, match="--time-limit"):
            flags.duration(bad)


@pytest.mark.parametrize("at,total", [(30, 200), (30, 45), (5, 50), (99, 100), (60, 80)])
def test_stretch_keeps_the_past_and_ends_the_decay_where_the_new_plan_ends(at, total):
    from engine.sched import stretch, warmup_cosine
    old = warmup_cosine(1.0, 0.0, 100, 10)
    new = stretch(old, at, total, 10)
    assert len(new) == total
    np.testing.assert_array_equal(new[:at], old[:at])                     # what was trained on is unchanged
    assert abs(new[at] - old[at]) <= abs(old[at] - old[at - 1]) + 1e-12   # no jump where the plan changes
    assert np.all(np.diff(new[max(at, 10):]) <= 1e-12)                    # the decay goes on decaying ...
    assert new[-1] < 0.01                                                 # ... to its end at the new last step
    if at <= 10:   # inside the warm-up: the same as a schedule planned for `total` from the start
        np.testing.assert_allclose(new, warmup_cosine(1.0, 0.0, total, 10), atol=2e-4)
    const = stretch(np.full(100, 0.99), at, total)                        # MoCo's constant momentum stays so
    np.testing.assert_array_equal(const, np.full(total, 0.99))


def test_a_run_with_a_time_limit_plans_its_steps_and_ends_with_a_checkpoint_and_the_knn(tmp_path):
    """--epochs 400 would take minutes: the limit (from a YAML file, as every flag) ends it after a few seconds of
    steps, at the step the plan chose, with the lr schedule run to its end, a checkpoint and the final kNN."""
    cfg = tmp_path / "limit.yaml"
    cfg.write_text("time_limit: 6s\nepochs: 400\n")
    out = tmp_path / "run"
    r = run_here(["train.py", "--config", str(cfg), "--subset", "256", "--batch-size", "32", "--lr", "0.3",
                  "--knn-every", "0", "--knn-train", "256", "--knn-test", "128", "--knn-k", "5", "--out", str(out)]
                 + [a for a in TINY if a not in ("--knn-every", "-1")])
    assert r.returncode == 0, r.stderr[-2000:]
    assert "of --time-limit 6s" in r.stdout, r.stdout[-2000:]
    planned = "steps planned" in r.stdout and "reached at step" not in r.stdout   # else a machine far too slow
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert 3 <= steps < 400 * 8 and summary["time_limit_s"] == 6
    assert isinstance(summary["knn_top1"], float)
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["plan"]["total"] == steps and len(state["plan"]["lr"]) == steps
    peak = 0.3 * 32 / 256
    assert state["plan"]["lr"][-1] < 0.05 * peak or not planned   # planned to end: the cosine (nearly) at zero
    logged = read_csv(out / "train.csv")
    assert int(logged[-1]["step"]) == steps - 1   # the last step trained is the plan's last
    knn = read_csv(out / "knn.csv")[-1]   # the final kNN, with the training minutes it took to get there
    assert float(knn["minutes"]) == pytest.approx(summary["train_s"] / 60, abs=0.5)


def test_a_stopped_time_limited_run_resumes_with_its_plan_and_the_time_left(tmp_path):
    """Stopped by SIGTERM after its first plan: the checkpoint holds the plan, the time used and the schedule it
    planned; --resume auto goes on with them (the schedule's past unchanged, the time used only grows)."""
    out = tmp_path / "run"
    args = ["train.py", "--subset", "256", "--batch-size", "32", "--lr", "0.3", "--time-limit", "8s", "--epochs",
            "400", "--log-every", "1", "--out", str(out)] + TINY
    r = run_here(args + ["--fault-signal-step", "4"])
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    stopped = torch.load(out / "last.pt", weights_only=False)
    done = stopped["epoch"] * 8 + stopped["batch"]
    assert 0 < stopped["plan"]["used_s"] < 8 and done >= 5
    r = run_here(args + ["--resume", "auto"])
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    final = torch.load(out / "last.pt", weights_only=False)
    assert final["plan"]["used_s"] > stopped["plan"]["used_s"]
    np.testing.assert_array_equal(final["plan"]["lr"][:done], stopped["plan"]["lr"][:done])
    assert json.loads((out / "summary.json").read_text())["steps"] == final["plan"]["total"] > done
