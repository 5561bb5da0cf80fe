"""The .beton is the data set: `train.py --loader ffcv --beton F` needs no --data, trains on F's images normalised
with its sidecar's mean and std, at its data set's resolution, and scores the val split beside the folder F was
written from; a --data, --dataset or --subset that contradicts the sidecar is one error line; the size line is
right or an error; under torchrun (the design card's command) the same; eval.knn, eval.bench, eval.study and
mining.mine take the data set from the .beton too."""
import contextlib
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from engine.errors import UsageError
from tests.helpers import TINY, make_image_folder, read_csv, run, run_here

MEAN, STD = [0.25, 0.5, 0.75], [0.2, 0.3, 0.4]   # not ImageNet's nor Fashion-MNIST's: they can only come from F.json
QUICK = ["--batch-size", "4", "--epochs", "1", "--knn-every", "0", "--knn-k", "5"]


@pytest.fixture(scope="module")
def inette(tmp_path_factory):
    """An Imagenette in miniature: set/train (2 classes, 6 images each, and 2 unreadable files) with set/val beside
    it, written to set.beton; the sidecar's mean and std set to MEAN and STD."""
    d = tmp_path_factory.mktemp("beton")
    make_image_folder(str(d / "set" / "train"), per_class=6, classes=2, seed=0, bad=True)
    val, _ = make_image_folder(str(d / "set" / "val"), per_class=3, classes=2, seed=1, bad=False)
    beton = str(d / "set.beton")
    from loaders import prepare
    with contextlib.redirect_stdout(io.StringIO()):
        assert prepare.main(["--data", str(d / "set" / "train"), "--out", beton, "--workers", "1",
                             "--no-progress"]) == 0
    meta = json.load(open(beton + ".json"))
    json.dump(meta | {"mean": MEAN, "std": STD}, open(beton + ".json", "w"))
    return {"beton": beton, "train": str(d / "set" / "train"), "val": val, "meta": meta, "dir": d}


def check_run(out, stdout, inette, res):
    """What a run on the .beton alone must have done: said what it holds, scored the val split beside its folder
    with the .beton's classes, normalised with the sidecar's mean and std, at its data set's resolution."""
    beton, train, val = inette["beton"], inette["train"], os.path.dirname(os.path.dirname(inette["val"][0]))
    lines = stdout.splitlines()
    assert lines[0] == f"data: {beton}: 12 images of imagefolder in {train}, 2 classes: 2 unreadable images skipped"
    assert f"scored on: the val split of {val} (6 images)" in lines
    assert "fashion" not in stdout.lower()
    cfg = json.load(open(out / "config.json"))
    assert (cfg["dataset"], cfg["data"], cfg["res"]) == ("imagefolder", train, res)
    assert cfg["scoring"] == {"on": f"the val split of {val} (6 images)", "bank": 12, "scored": 6,
                              "classes": inette["meta"]["classes"]}
    assert inette["meta"]["classes"] == ["class0", "class1"]
    assert cfg["norm"] == {"mean": MEAN, "std": STD}
    knn = read_csv(out / "knn.csv")
    assert len(knn) == 1 and 0 <= float(knn[0]["knn_top1"]) <= 100


def test_a_beton_alone_trains_on_its_data_set_and_scores_its_val_split(inette, tmp_path):
    """The issue's command as a new user types it: no --data, no --res."""
    out = tmp_path / "run"
    r = run_here(["train.py", *TINY, *QUICK, "--loader", "ffcv", "--beton", inette["beton"], "--out", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    check_run(out, r.stdout, inette, res=224)   # imagefolder's default, not Fashion-MNIST's 28


def test_the_normalisation_and_the_monitor_are_the_sidecars(inette, tmp_path):
    from tests.test_splits import digests, monitor_of
    r, _ = monitor_of(["--loader", "ffcv", "--beton", inette["beton"]], tmp_path)
    from loaders.beton import BetonSource
    assert isinstance(r.train_src, BetonSource) and len(r.train_src) == 12
    u8 = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    for norm in (r.norm, r.loader.augment.plain):   # the monitor's and the training views'
        got = norm(u8)[0, :, 0, 0]
        torch.testing.assert_close(got, (1 - torch.tensor(MEAN)) / torch.tensor(STD))
    assert r.test_src.classes == ["class0", "class1"] and len(r.test_src) == 6
    assert not set(digests(r.train_src)) & set(digests(r.test_src))
    img, label = r.train_src.load(7)   # the .beton's own image 7: the 8th readable file, re-encoded as JPEG
    from loaders.prepare import read_rgb
    files = sorted(p for p in (os.path.join(dp, f) for dp, _, fs in os.walk(inette["train"]) for f in fs)
                   if "zz_" not in p)
    ref = torch.from_numpy(read_rgb(files[7]).copy()).permute(2, 0, 1).float()
    assert label == 1 and img.shape == ref.shape and (img.float() - ref).abs().mean() < 3


def test_a_val_beton_is_scored_when_given(inette, tmp_path):
    from loaders import prepare
    from tests.test_splits import digests, monitor_of
    val = str(tmp_path / "val.beton")   # the val split of the ImageNet layout set/ (train/ and val/)
    with contextlib.redirect_stdout(io.StringIO()):
        assert prepare.main(["--data", str(inette["dir"] / "set"), "--split", "val", "--out", val, "--workers", "1",
                             "--no-progress"]) == 0
    r, said = monitor_of(["--loader", "ffcv", "--beton", inette["beton"], "--val-beton", val], tmp_path / "r")
    assert f"scored on: the val .beton {val} (6 images)" in said.splitlines()
    assert len(r.test_src) == 6 and r.test_src.path == val and not set(digests(r.train_src)) & set(digests(r.test_src))
    import flags
    for argv, said in ((["--val-split", "2"], "both say what is scored: give one"),
                       (["--val-beton", inette["beton"]], "is the training .beton")):
        with pytest.raises(UsageError, match=said):
            monitor_of(["--loader", "ffcv", "--beton", inette["beton"], "--val-beton", val, *argv], tmp_path / "x")
    with pytest.raises(UsageError, match="--val-beton .* scores a .beton run: add --loader ffcv"):
        flags.parse(["--val-beton", val])


def test_a_data_set_that_contradicts_the_sidecar_is_one_line(inette, tmp_path):
    beton, other = inette["beton"], str(tmp_path / "other")
    make_image_folder(other, per_class=2, classes=2, bad=False)
    for argv, said in ((["--data", other], f"--data {other}, but --beton {beton} was written from {inette['train']} "
                                           f"(its sidecar {beton}.json): the .beton is the data set, drop --data"),
                       (["--dataset", "fashion-mnist"], f"--dataset fashion-mnist, but --beton {beton} holds "
                                                        "imagefolder"),
                       (["--subset", "5"], f"--subset 5, but --beton {beton} holds the whole set")):
        r = run_here(["train.py", *TINY, *QUICK, "--loader", "ffcv", "--beton", beton, *argv,
                      "--out", str(tmp_path / "x")])
        assert r.returncode == 2 and r.stderr.startswith(f"error: {said}") and r.stderr.count("\n") == 1, r.stderr
    import flags
    agree = flags.parse(["--loader", "ffcv", "--beton", beton, "--data", inette["train"] + "/"])
    assert agree.dataset == "imagefolder" and agree.res == 224
    bare = str(tmp_path / "bare.beton")   # no sidecar: --data says what it holds, and is needed
    shutil.copy(beton, bare)
    r = run_here(["train.py", "--loader", "ffcv", "--beton", bare, "--out", str(tmp_path / "y")])
    assert r.returncode == 2 and r.stderr == (f"error: --beton {bare} has no sidecar ({bare}.json) to say what data "
                                              "set it holds: give --data, the data set it was written from (or write "
                                              "it again with loaders.prepare)\n")
    t = flags.parse(["--loader", "ffcv", "--beton", bare, "--data", inette["train"]])
    assert t.dataset == "imagefolder" and t.data_found.endswith("(no sidecar: as its data set says)")


def test_the_size_line_is_right_or_an_error(inette, tmp_path):
    from loaders import LoaderOptions, build_loader
    from loaders.augment import RECIPES
    from loaders.beton import beton_meta, describe
    from loaders.datasets import open_source
    beton = inette["beton"]
    meta = beton_meta(beton)
    assert describe(beton, meta).endswith("12 images of imagefolder in " + inette["train"] + ", 2 classes: 2 "
                                          "unreadable images skipped")
    assert describe(beton, meta | {"subset": 12, "source_samples": 20, "skipped": 0}).endswith(
        ": a subset of 20 (seed 0)")
    with pytest.raises(UsageError, match="holds 12 images, but its sidecar counts 14 written less 0 skipped"):
        describe(beton, meta | {"skipped": 0})
    sidecar = json.load(open(beton + ".json"))
    lied = str(tmp_path / "lied.beton")
    shutil.copy(beton, lied)
    json.dump(sidecar | {"num_samples": 99}, open(lied + ".json", "w"))
    with pytest.raises(UsageError, match="holds 12 images, its sidecar .* says 99"):
        beton_meta(lied)
    folder = open_source("imagefolder", inette["train"], True)   # 14 files, 2 of them unreadable: not the .beton's
    with pytest.raises(UsageError, match=r"holds 12 images \(.*2 unreadable images skipped\), the source given 14"):
        build_loader(LoaderOptions("ffcv", 32, 4, beton=beton, workers=1), folder, RECIPES["simclr"], "cpu")


def test_a_subset_of_the_beton_reads_only_its_rows(inette):
    """Rows held out to score are never read: Batch.index is a position among the rows kept, and each view is
    a crop of that row's image."""
    import cv2

    from loaders import LoaderOptions, build_loader
    from loaders.beton import BetonSource, beton_meta
    from loaders.crops import view_box
    from loaders.datasets import Subset
    src = BetonSource(inette["beton"], beton_meta(inette["beton"]))
    rows = np.array([1, 2, 4, 7, 8, 9, 10, 11])
    ld = build_loader(LoaderOptions("ffcv", 32, 4, beton=inette["beton"], workers=1, seed=2, ffcv_order="ours"),
                      Subset(src, rows), [type("A", (), {"crop_scale": (0.5, 1.0)})()], "cpu")
    ld.augment = lambda raw: raw
    ld.set_epoch(1)
    seen = []
    for b in ld:
        for k, p in enumerate(b.index.tolist()):
            img = src.load(int(rows[p]))[0].permute(1, 2, 0).numpy()
            t, l, h, w = view_box(2, 1, int(rows[p]), 0, img.shape[0], img.shape[1], (0.5, 1.0))
            ref = cv2.resize(img[t:t + h, l:l + w], (32, 32), interpolation=cv2.INTER_AREA).astype(float)
            got = b.views[0, k].permute(1, 2, 0).numpy().astype(float)
            assert np.abs(got - ref).mean() < 4, p
            assert int(b.label[k]) == int(src.labels[rows[p]])
            seen.append(p)
    assert sorted(seen) == list(range(8))


def test_bench_study_and_mining_take_the_data_set_from_the_beton(inette, tmp_path):
    from eval import bench, study
    beton = inette["beton"]
    t = bench.train_args(bench.build_parser().parse_args(["--beton", beton, "--loader", "ffcv,torch"]))
    assert (t.dataset, t.data, t.res) == ("imagefolder", inette["train"], 224)
    sources = bench.bench_sources(t, ["ffcv", "torch"])
    assert len(sources["ffcv"]) == len(sources["synthetic"]) == 12 and len(sources["torch"]) == 14
    with pytest.raises(UsageError, match="`dataset` cifar10, but `beton`"):
        bench.train_args(bench.build_parser().parse_args(["--beton", beton, "--dataset", "cifar10"]))
    with pytest.raises(UsageError, match=re.escape(f"`data` {tmp_path}, but `beton` {beton} was written from")):
        study.parse(["--out", str(tmp_path / "s"), "--extra", f"--loader ffcv --beton {beton} --data {tmp_path}"])
    r = run_here(["train.py", *TINY, *QUICK, "--res", "32", "--loader", "ffcv", "--beton", beton,
                  "--out", str(tmp_path / "run")])
    assert r.returncode == 0, r.stderr[-2000:]
    ck = str(tmp_path / "run" / "last.pt")
    m = run_here(["-m", "mining.mine", "--encoder", ck, "--beton", beton, "--out", str(tmp_path / "p.pt"),
                  "--k", "3", "--res", "32", "--workers", "0", "--no-progress"])
    assert m.returncode == 0 and m.stdout.startswith(f"data: {beton}: 12 images of imagefolder"), m.stderr[-2000:]
    from loaders.datasets import fingerprint
    from loaders.splits import DataSpec, open_splits
    meta = torch.load(tmp_path / "p.pt", weights_only=False)["meta"]
    assert meta["n"] == 12 and meta["fingerprint"] == fingerprint(open_splits(DataSpec(beton=beton)).train)
    e = run_here(["-m", "eval.knn", "--checkpoint", ck, "--k", "3", "--workers", "0", "--no-progress"])
    assert e.returncode == 0 and f"data: {beton}: 12 images" in e.stdout, e.stderr[-2000:]
    res = json.load(open(tmp_path / "run" / "eval_knn.json"))
    assert (res["n_train"], res["n_test"]) == (12, 6)   # the .beton against the val split beside its folder


@pytest.mark.slow
def test_the_design_cards_command_on_two_ranks(inette, tmp_path):
    """torchrun --nproc_per_node=2 train.py --loader ffcv --beton F, over gloo: the same checks."""
    out = tmp_path / "run"
    r = run(["train.py", *TINY, *QUICK, "--res", "32", "--loader", "ffcv", "--beton", inette["beton"],
             "--out", str(out)], torchrun=2, timeout=400)
    assert r.returncode == 0 and "done: kNN top-1" in r.stdout, r.stderr[-2000:]
    check_run(out, r.stdout, inette, res=32)
    assert json.load(open(out / "config.json"))["world"] == 2
