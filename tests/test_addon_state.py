"""The add-ons' saved state (engine/extension.py: state_dict / load_state_dict): a run stopped by SIGTERM and
resumed with --resume auto ends with the uninterrupted run's weights, plain, with --bsim, --sepp (a bank mined in
the run, or a pairs file) and both, on the torch, device and ffcv loaders, mid-epoch and at an epoch boundary
(the runs in this process: train.py's SIGTERM handler is put back after each); a checkpoint written before SePP
saved its state still loads, and says what it rebuilds."""
import pytest
import torch

from tests.conftest import needs_fashion
from tests.helpers import TINY, run_here

# 256 images in batches of 32: 8 steps an epoch; SePP mines from epoch 1 (--sepp-warmup 1)
BASE = ["train.py", *TINY, "--subset", "256", "--batch-size", "32", "--lr", "0.2", "--log-every", "1"]


def weights(path):
    return torch.load(path, weights_only=False)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


def stop_resume_equals_uninterrupted(args, tmp_path, stop_at):
    """args run to the end; again, SIGTERMed at global step stop_at (a checkpoint, exit 3) and resumed. -> the
    stopped run's checkpoint and the resumed run's output, once the final weights are checked equal."""
    ref = run_here(args + ["--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "stopped"
    r = run_here(args + ["--out", str(out), "--fault-signal-step", str(stop_at)])
    assert r.returncode == 3, r.stdout[-2000:] + r.stderr[-2000:]
    saved = torch.load(out / "last.pt", weights_only=False)
    r = run_here(args + ["--out", str(out), "--resume", "auto"])
    assert r.returncode == 0 and "resumed from" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert_same_weights(weights(tmp_path / "ref" / "last.pt"), weights(out / "last.pt"))
    return saved, r


@needs_fashion
@pytest.mark.parametrize("loader,extra,stop_at,epochs,refreshes", [
    ("torch", [], 12, 3, 1),                              # mid-epoch 1, after its refresh; epoch 2 refreshes
    ("torch", ["--sepp-every", "2"], 15, 4, 1),           # the end of epoch 1: epoch 2 keeps epoch 1's pairs
    ("device", ["--sepp-bank", "train"], 20, 3, 0),       # mid-epoch 2: the training-pass bank carries over
])
def test_a_resumed_sepp_run_equals_the_uninterrupted_one(tmp_path, loader, extra, stop_at, epochs, refreshes):
    args = BASE + ["--sepp", "--sepp-warmup", "1", "--loader", loader, "--epochs", str(epochs)] + extra
    saved, r = stop_resume_equals_uninterrupted(args, tmp_path, stop_at)
    sepp = saved["extensions"]["SePP"]
    assert sepp["neighbours"] is not None and sepp["refreshed"] >= 1
    assert r.stdout.count("SePP refresh") == refreshes, r.stdout[-3000:]   # none again for the resumed epoch


@pytest.fixture(scope="module")
def beton256(tmp_path_factory):
    from tests.test_ffcv import prepare
    out = str(tmp_path_factory.mktemp("beton") / "f256.beton")
    r = prepare("--subset", "256", "--out", out, "--write-mode", "raw")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def pairs256(tmp_path_factory):
    """A pairs file of mining.mine's form for the 256 training samples: 3 random neighbours each (none itself)."""
    from loaders.datasets import fingerprint, open_source
    src = open_source("fashion-mnist", None, subset=256)
    g = torch.Generator().manual_seed(0)
    ids = (torch.arange(256)[:, None] + torch.randint(1, 256, (256, 3), generator=g)) % 256
    path = tmp_path_factory.mktemp("pairs") / "pairs.pt"
    torch.save({"ids": ids, "sims": torch.ones(256, 3), "meta": {"n": 256, "fingerprint": fingerprint(src),
                                                                 "dataset": "fashion-mnist"}}, path)
    return str(path)


# each add-on on each loader, and each loader both mid-epoch (step 11: the 4th of epoch 2 of 8 steps) and at an epoch
# boundary (step 7: the end of epoch 1); plain torch and device mid-epoch: tests/test_faults.py. SePP mines at the
# start (--sepp-warmup 0) and not again (--sepp-every 2): the resumed run must bring its pairs back, not mine again
CASES = [("torch", "bsim", 11), ("torch", "bsim+sepp", 7), ("torch", "pairs", 11),
         ("device", "bsim", 7), ("device", "bsim+sepp", 11), ("device", "pairs", 7),
         ("ffcv", "plain", 7), ("ffcv", "bsim", 11), ("ffcv", "sepp", 7), ("ffcv", "bsim+sepp", 11)]


@needs_fashion
@pytest.mark.parametrize("loader,variant,stop_at", CASES)
def test_a_resumed_run_equals_the_uninterrupted_one_for_each_addon_and_loader(tmp_path, request, loader, variant,
                                                                               stop_at):
    sepp = ["--sepp", "--sepp-warmup", "0", "--sepp-every", "2"]
    addons = {"plain": [], "bsim": ["--bsim"], "sepp": sepp, "bsim+sepp": ["--bsim", *sepp],
              "pairs": ["--sepp-pairs", request.getfixturevalue("pairs256")]}[variant]
    where = ["--loader", loader] + (["--beton", request.getfixturevalue("beton256")] if loader == "ffcv" else [])
    args = BASE + where + addons + ["--epochs", "2"] + (["--workers", "0"] if loader == "torch" else [])   # ffcv: 1
    saved, r = stop_resume_equals_uninterrupted(args, tmp_path, stop_at)
    assert (saved["epoch"], saved["batch"]) == ((1, 0) if stop_at == 7 else (1, 4))   # mid-epoch or its end
    assert ("SePP" in saved["extensions"]) == ("sepp" in variant or variant == "pairs")
    if "sepp" in variant:   # mined once, in the stopped run: its pairs came back from the checkpoint
        assert saved["extensions"]["SePP"]["neighbours"] is not None and "SePP refresh" not in r.stdout


@needs_fashion
def test_a_checkpoint_without_addon_state_loads_and_says_what_it_rebuilds(tmp_path):
    out = tmp_path / "old"
    args = BASE + ["--sepp", "--sepp-warmup", "1", "--epochs", "3", "--out", str(out)]
    r = run_here(args + ["--fault-signal-step", "12"])
    assert r.returncode == 3, r.stderr[-2000:]
    state = torch.load(out / "last.pt", weights_only=False)
    del state["extensions"]   # as a checkpoint of an earlier version
    torch.save(state, out / "last.pt")
    r = run_here(args + ["--resume", "auto"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("note: the checkpoint holds no SePP state") == 1 and "mined again" in r.stdout
    assert "SePP refresh" in r.stdout   # rebuilt at the resumed epoch's start
