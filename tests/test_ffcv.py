"""FFCV back end: prepare (bad images skipped and reported), decode-once multi-crop views against PIL,
2-rank coverage, and clear errors for files that are not a .beton."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from loaders import LoaderOptions
from loaders.augment import RECIPES
from loaders.crops import view_box
from loaders.ffcv_loader import FFCVLoader
from loaders.prepare import read_rgb
from tests.conftest import FASHION, have_fashion
from tests.helpers import ROOT, TINY, make_image_folder, ranks_cover_every_index, read_csv, run, run_here


def prepare(*args):
    return subprocess.run([sys.executable, "-m", "loaders.prepare", "--workers", "2", "--no-progress", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def folder_beton(tmp_path_factory):
    d = tmp_path_factory.mktemp("ffcv")
    good, bad = make_image_folder(str(d / "img"), per_class=6)
    out = str(d / "img.beton")
    r = prepare("--dataset", "imagefolder", "--data", str(d / "img"), "--out", out, "--jpeg-quality", "95")
    assert r.returncode == 0, r.stderr
    return out, good, bad, r


@pytest.fixture(scope="module")
def fashion_beton(tmp_path_factory):
    if not have_fashion():
        pytest.skip(f"no Fashion-MNIST idx files in {FASHION} (set FASHION_MNIST_DIR)")
    out = str(tmp_path_factory.mktemp("ffcvf") / "fashion.beton")
    r = prepare("--subset", "512", "--out", out, "--write-mode", "raw")
    assert r.returncode == 0, r.stderr
    return out


def test_prepare_skips_and_reports_corrupt_and_truncated(folder_beton):
    out, good, bad, r = folder_beton
    report = open(out + ".report.txt").read()
    assert all(b in report for b in bad) and "2 of 14" in report
    meta = json.load(open(out + ".json"))
    assert meta["num_samples"] == len(good) == 12 and meta["skipped"] == 2 and meta["num_classes"] == 2
    assert f"wrote {out}: 12 images" in r.stdout and "skipped 2" in r.stdout
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".tmp-" in f]
    again = prepare("--dataset", "imagefolder", "--data", os.path.dirname(good[0]) + "/..", "--out", out)
    assert again.returncode == 2 and "exists (add --force" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_views_are_regions_of_the_pil_decoded_source(folder_beton, device):
    """Each view = the view_box region of the PIL-decoded file resized to res (after the JPEG re-encode at
    quality 95); the two views of a sample differ; the index/label fields are right."""
    out, good, _, _ = folder_beton
    labels = [0 if "class0" in p else 1 for p in good]
    loader = FFCVLoader(RECIPES["simclr"], LoaderOptions("ffcv", 32, 4, beton=out, workers=2, seed=3), device,
                        lambda raw: raw)
    loader.set_epoch(1)
    seen = 0
    for b in loader:
        assert b.views.device.type == device
        b.views, b.index, b.label = b.views.cpu(), b.index.cpu(), b.label.cpu()
        assert b.views.shape == (2, 4, 3, 32, 32) and b.views.dtype == torch.uint8
        for k, i in enumerate(b.index.tolist()):
            img = read_rgb(good[i])
            assert int(b.label[k]) == labels[i]
            H, W = img.shape[:2]
            for v in range(2):
                t, l, h, w = view_box(3, 1, i, v, H, W, (0.08, 1.0))
                ref = cv2.resize(img[t:t + h, l:l + w], (32, 32), interpolation=cv2.INTER_AREA).astype(float)
                got = b.views[v, k].permute(1, 2, 0).numpy().astype(float)
                assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.98 and np.abs(ref - got).mean() < 4
            assert (b.views[0, k].float() - b.views[1, k].float()).abs().mean() > 5
            seen += 1
    assert seen == 12  # drop_last: 3 batches of 4


def test_crops_follow_torchvision_rules_and_change_with_epoch():
    """Same distribution as torchvision's RandomResizedCrop.get_params (the reference it reproduces)."""
    from torchvision.transforms import RandomResizedCrop
    boxes = [view_box(0, e, 7, 0, 300, 400, (0.08, 1.0)) for e in range(3000)]
    torch.manual_seed(0)
    img = torch.zeros(1, 300, 400)
    ref = [tuple(RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))) for _ in range(3000)]
    for bx in (boxes, ref):
        assert all(t >= 0 and l >= 0 and t + h <= 300 and l + w <= 400 for t, l, h, w in bx)
    area, area_ref = (np.array([h * w for _, _, h, w in bx]) / 120000 for bx in (boxes, ref))
    aspect, aspect_ref = (np.log([w / h for _, _, h, w in bx]) for bx in (boxes, ref))
    assert len(set(boxes)) > 2900 and area.min() >= 0.08 - 1e-3
    assert abs(area.mean() - area_ref.mean()) < 0.02 and abs(area.std() - area_ref.std()) < 0.02
    assert abs(aspect.mean() - aspect_ref.mean()) < 0.02
    assert view_box(0, 3, 7, 1, 300, 400, (0.08, 1.0)) == view_box(0, 3, 7, 1, 300, 400, (0.08, 1.0))


@pytest.mark.slow
def test_two_ranks_cover_every_index_once_per_epoch(fashion_beton, tmp_path):
    ranks_cover_every_index(["--loader", "ffcv", "--beton", fashion_beton], tmp_path)   # (FFCV on CPU may hang)


def test_not_a_beton_and_truncated_beton_are_clear_errors(fashion_beton, tmp_path):
    from engine.errors import UsageError
    from loaders.ffcv_loader import check_beton
    junk = tmp_path / "junk.beton"
    junk.write_bytes(os.urandom(5000))
    cut = tmp_path / "cut.beton"
    data = open(fashion_beton, "rb").read()
    cut.write_bytes(data[:len(data) // 2])
    for path, what in ((junk, "not a readable FFCV .beton"), (cut, "truncated or damaged"),
                       (tmp_path / "missing.beton", "no such file"), (None, "needs --beton")):
        with pytest.raises(UsageError) as e:
            check_beton(str(path) if path else None)
        assert what in e.value.for_cli(), e.value   # as the command line says it (the loader: `beton`)
    r = run_here(["train.py", *TINY, "--loader", "ffcv", "--beton", str(cut), "--epochs", "1",
                  "--out", str(tmp_path / "r")])
    assert r.returncode == 2 and "truncated or damaged" in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]


@pytest.mark.slow
def test_train_with_ffcv_two_ranks_progressive_resolution_sepp_and_bsim(fashion_beton, tmp_path):
    """2 ranks over gloo, crop size growing 16 -> 28 over the 2 epochs (the decoder is recompiled), with
    semantic positives from epoch 1 (the pair plan as FFCV's order) and BSIM mixtures at once (BYOL)."""
    out = str(tmp_path / "run")
    r = run(["train.py", *TINY, "--loader", "ffcv", "--beton", fashion_beton, "--subset", "512", "--epochs", "2",
             "--batch-size", "64", "--lr", "0.1", "--min-res", "16", "--res", "28", "--method", "byol",
             "--sepp", "--sepp-warmup", "1", "--bsim", "--out", out], torchrun=2, timeout=400)
    assert r.returncode == 0 and "done:" in r.stdout, r.stderr[-2000:]
    rows = read_csv(os.path.join(out, "epoch.csv"))
    assert len(rows) == 2 and all(np.isfinite(float(x["loss"])) for x in rows)
    sepp = read_csv(os.path.join(out, "sepp.csv"))
    assert len(sepp) == 1 and float(sepp[0]["paired"]) > 0.5
    steps = read_csv(os.path.join(out, "train.csv"))
    assert all(x["loss_sepp"] == "" for x in steps if x["epoch"] == "0")
    assert all(np.isfinite(float(x["loss_sepp"])) and np.isfinite(float(x["loss_mix"]))
               for x in steps if x["epoch"] == "1")
