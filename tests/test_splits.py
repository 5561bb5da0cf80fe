"""A score is never measured on the images it was fitted to: in every layout (an ImageNet layout with no val/, a
class tree, a file list with no val list, a .beton of either) the kNN monitor's scored images and its bank are
disjoint, the held-out part is the same for every run and seed and is not trained on, and eval.knn and
eval.linear score the same held-out images against the rest."""
import contextlib
import hashlib
import io
import json
import os
import signal

import numpy as np
import pytest

from loaders.datasets import open_source
from loaders.splits import AUTO_SHARE, DataSpec, open_splits
from tests.helpers import TINY, make_image_folder, run_here

QUICK = ["--res", "32", "--batch-size", "4", "--epochs", "1", "--knn-every", "0"]


def digests(src) -> list[str]:
    """A hash of each image's pixels: the images a source holds, whatever it reads them from."""
    return [hashlib.sha1(src.load(i)[0].numpy().tobytes()).hexdigest() for i in range(len(src))]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """Labelled sets with no split of their own to score on: {name: (train.py flags, images in all)}."""
    d = tmp_path_factory.mktemp("splits")
    make_image_folder(str(d / "inet" / "train"), per_class=10, classes=2, seed=0, bad=False)   # no val/ beside
    make_image_folder(str(d / "tree"), per_class=10, classes=2, seed=1, bad=False)
    files, _ = make_image_folder(str(d / "listed"), per_class=10, classes=2, seed=2, bad=False)
    with open(d / "train.txt", "w") as f:
        f.writelines(f"{os.path.relpath(p, d)} {int('class1' in p)}\n" for p in files)
    from loaders import prepare
    assert prepare.main(["--data", str(d / "tree"), "--out", str(d / "tree.beton"), "--workers", "1",
                         "--no-progress"]) == 0
    return {"imagenet layout": (["--data", str(d / "inet")], 20), "class tree": (["--data", str(d / "tree")], 20),
            "file list": (["--data", str(d / "train.txt")], 20),
            ".beton": (["--loader", "ffcv", "--beton", str(d / "tree.beton")], 20)}


def monitor_of(argv, out):
    """train.py's set-up for argv (no training): the run's state (the monitor's bank and scored split) and what
    it printed."""
    import flags
    import train
    from engine import dist
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            r = train.setup(flags.parse(TINY + QUICK + argv + ["--out", str(out)]))
        r.log.close()
        dist.cleanup()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    return r, said.getvalue()


@pytest.mark.parametrize("kind", ["imagenet layout", "class tree", "file list", ".beton"])
def test_the_monitor_holds_out_a_fixed_part_never_in_its_bank(layouts, kind, tmp_path):
    argv, total = layouts[kind]
    r, said = monitor_of(argv, tmp_path / "a")
    bank, scored = digests(r.train_src), digests(r.test_src)
    k = total // AUTO_SHARE
    assert len(scored) == k and len(bank) == total - k and len(set(bank + scored)) == total
    assert not set(bank) & set(scored)                       # never a scored image in the bank ...
    assert len(r.loader) == (total - k) // 4                 # ... nor among the images that train
    assert f"held out ({k / total:.0%}, the same for every run and seed), neither trained on nor in the kNN bank " \
           "(--val-split N sets how many)" in said, said
    again, _ = monitor_of(argv + ["--seed", "3"], tmp_path / "b")
    assert digests(again.test_src) == scored                 # the same part for every run and seed
    cfg = json.load(open(tmp_path / "a" / "config.json"))
    assert cfg["val_split"] == k and cfg["scoring"]["scored"] == k and cfg["scoring"]["bank"] == total - k
    from eval.features import eval_sources                   # eval.knn and eval.linear: the same split
    with contextlib.redirect_stdout(io.StringIO()):
        train, test, _ = eval_sources(cfg)
    assert digests(test) == scored and sorted(digests(train)) == sorted(bank)


def test_a_set_with_its_own_split_scores_it_and_a_val_split_is_held_out(layouts, tmp_path):
    """An ImageNet layout with val/ scores val/; --val-split N holds N out instead; unlabelled: nothing."""
    d = tmp_path / "inet"
    make_image_folder(str(d / "train"), per_class=4, classes=2, seed=5, bad=False)
    make_image_folder(str(d / "val"), per_class=2, classes=2, seed=6, bad=False)
    s = open_splits(DataSpec("imagefolder", str(d)))
    assert (len(s.train), len(s.scored), s.val_split, s.note) == (8, 4, 0, None)
    assert not set(digests(s.train)) & set(digests(s.scored))
    s = open_splits(DataSpec("imagefolder", str(d), val_split=3))
    assert (len(s.train), len(s.scored), s.val_split) == (5, 3, 3) and not set(digests(s.train)) & set(digests(s.scored))
    s = open_splits(DataSpec("images", str(d / "train")))
    assert s.scored is None and len(s.train) == 8


def test_a_class_tree_named_train_scores_the_val_beside_it(tmp_path):
    make_image_folder(str(tmp_path / "set" / "train"), per_class=4, classes=2, seed=7, bad=False)
    make_image_folder(str(tmp_path / "set" / "val"), per_class=2, classes=2, seed=8, bad=False)
    s = open_splits(DataSpec("imagefolder", str(tmp_path / "set" / "train")))
    assert (len(s.train), len(s.scored), s.val_split) == (8, 4, 0)
    assert s.scored.files[0].startswith(str(tmp_path / "set" / "val"))
    make_image_folder(str(tmp_path / "set" / "val"), per_class=1, classes=3, seed=9, bad=False)   # a third class
    from engine.errors import UsageError
    with pytest.raises(UsageError, match="its val split has 3 classes .* the training set 2"):
        open_splits(DataSpec("imagefolder", str(tmp_path / "set" / "train")))
    assert len(open_source("imagefolder", str(tmp_path / "set" / "train"), True)) == 8


@pytest.mark.slow
def test_eval_knn_and_linear_score_the_held_out_part_of_a_class_tree(layouts, tmp_path):
    argv, total = layouts["class tree"]
    out = tmp_path / "run"
    r = run_here(["train.py", *TINY, *QUICK, *argv, "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    k = total // AUTO_SHARE
    for ev, extra in (("knn", ["--k", "3"]), ("linear", ["--epochs", "1", "--batch-size", "4"])):
        e = run_here(["-m", f"eval.{ev}", "--checkpoint", str(out / "last.pt"), "--workers", "0", "--no-progress",
                      *extra])
        assert e.returncode == 0, e.stderr[-2000:]
        assert f"scored on: {k} of the {total} training images held out (the same" in e.stdout, e.stdout   # the run's
        res = json.load(open(out / f"eval_{ev}.json"))
        assert res["test_subset"] == f"all {k}"
        assert res.get("n_train", total - k) == total - k
