"""The add-ons' saved state (engine/extension.py: state_dict / load_state_dict): a run with --sepp stopped by
SIGTERM and resumed with --resume auto ends with the uninterrupted run's weights, mid-epoch and at an epoch
boundary, on the torch and device loaders (the stopped run in a process of its own, the others in this one); a
checkpoint written before SePP saved its state still loads, and says what it rebuilds."""
import pytest
import torch

from tests.conftest import needs_fashion
from tests.helpers import TINY, run, run_here

# 256 images in batches of 32: 8 steps an epoch; SePP mines from epoch 1 (--sepp-warmup 1)
BASE = ["train.py", *TINY, "--subset", "256", "--batch-size", "32", "--lr", "0.2", "--log-every", "1", "--sepp",
        "--sepp-warmup", "1"]


def weights(path):
    return torch.load(path, weights_only=False)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


@needs_fashion
@pytest.mark.parametrize("loader,extra,stop_at,epochs,refreshes", [
    ("torch", [], 12, 3, 1),                              # mid-epoch 1, after its refresh; epoch 2 refreshes
    ("torch", ["--sepp-every", "2"], 15, 4, 1),           # the end of epoch 1: epoch 2 keeps epoch 1's pairs
    ("device", ["--sepp-bank", "train"], 20, 3, 0),       # mid-epoch 2: the training-pass bank carries over
])
def test_a_resumed_sepp_run_equals_the_uninterrupted_one(tmp_path, loader, extra, stop_at, epochs, refreshes):
    args = BASE + ["--loader", loader, "--epochs", str(epochs)] + extra
    ref = run_here(args + ["--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "stopped"
    r = run(args + ["--out", str(out), "--fault-signal-step", str(stop_at)])   # a signal: a process of its own
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    saved = torch.load(out / "last.pt", weights_only=False)
    sepp = saved["extensions"]["SePP"]
    assert sepp["neighbours"] is not None and sepp["refreshed"] >= 1
    r = run_here(args + ["--out", str(out), "--resume", "auto"])
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.count("SePP refresh") == refreshes, r.stdout[-3000:]   # none again for the resumed epoch
    assert_same_weights(weights(tmp_path / "ref" / "last.pt"), weights(out / "last.pt"))


@needs_fashion
def test_a_checkpoint_without_addon_state_loads_and_says_what_it_rebuilds(tmp_path):
    out = tmp_path / "old"
    args = BASE + ["--epochs", "3", "--out", str(out)]
    r = run(args + ["--fault-signal-step", "12"])
    assert r.returncode == 3, r.stderr[-2000:]
    state = torch.load(out / "last.pt", weights_only=False)
    del state["extensions"]   # as a checkpoint of an earlier version
    torch.save(state, out / "last.pt")
    r = run_here(args + ["--resume", "auto"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("note: the checkpoint holds no SePP state") == 1 and "mined again" in r.stdout
    assert "SePP refresh" in r.stdout   # rebuilt at the resumed epoch's start
