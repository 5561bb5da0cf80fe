"""Your own images as they are: unlabelled folders (flat or nested) train with every file loader, SePP mines
them, whatever needs labels says so; the dataset is recognised from --data; progress in a file is plain lines."""
import io
import os
import shutil
import re

import numpy as np
import pytest
import torch
from PIL import Image

from engine import progress as progress_mod
from engine.errors import UsageError
from loaders import LoaderOptions, build_loader
from loaders.augment import RECIPES
from loaders.datasets import NoLabels, UnlabelledSource, open_source, recognise
from tests.conftest import FASHION, needs_fashion
from tests.helpers import TINY, make_image_folder, run, run_here, smooth_image

SMALL = ["--arch", "resnet10", "--width", "8", "--res", "32", "--batch-size", "8"]
BARS = [x for x in TINY if x != "--no-progress"]   # the progress output is what some tests read


def write_jpegs(paths, seed=0):
    rng = np.random.default_rng(seed)
    for p in paths:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        h, w = int(rng.integers(36, 80)), int(rng.integers(36, 80))
        Image.fromarray(smooth_image(rng, h, w)).save(p, quality=95)
    return sorted(paths)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    flat = write_jpegs([str(d / "flat" / f"{i:03d}.jpg") for i in range(24)])
    nested = write_jpegs([str(d / "nested" / sub / f"{i:03d}.jpg")
                          for i, sub in enumerate([""] * 6 + ["2024"] * 9 + [os.path.join("2025", "x")] * 9)], seed=1)
    with open(d / "nested" / "notes.txt", "w") as f:
        f.write("not an image")
    return {"flat": (str(d / "flat"), flat), "nested": (str(d / "nested"), nested)}


@pytest.mark.parametrize("kind", ["flat", "nested"])
def test_unlabelled_folder_reads_every_image_at_any_depth_with_label_minus_one(folders, kind):
    root, files = folders[kind]
    src = open_source("images", root, True)
    assert isinstance(src, UnlabelledSource) and src.files == files
    assert src.labels.tolist() == [-1] * len(files) and src.num_classes == 0
    for i in (0, len(files) - 1):
        img, label = src.load(i)
        ref = np.array(Image.open(files[i]).convert("RGB"))
        assert label == -1 and img.shape == (3, *ref.shape[:2])
        assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - ref).max() <= 2   # libjpeg-turbo vs PIL
    for split in (0, 4):   # the test split, or a validation split carved from the images: no labels either way
        with pytest.raises(NoLabels, match="no labels"):
            open_source("images", root, False, val_split=split)


@pytest.mark.parametrize("kind", ["flat", "nested"])
@pytest.mark.parametrize("loader", ["torch", "dali", "ffcv"])
def test_unlabelled_images_make_batches_with_every_file_loader(folders, kind, loader, tmp_path):
    """An epoch covers every image once (drop_last aside), views are uint8 crops, every label is -1."""
    root, files = folders[kind]
    src = open_source(recognise(None, root)[0], root, True)
    opts = LoaderOptions(loader, 32, 4, workers=1, seed=0)
    if loader == "ffcv":
        from loaders import prepare
        beton = str(tmp_path / "own.beton")
        assert prepare.main(["--data", root, "--out", beton, "--workers", "1", "--no-progress"]) == 0
        opts.beton = beton
    ld = build_loader(opts, src, RECIPES["simclr"], "cpu")
    ld.set_epoch(0)
    seen = []
    for b in ld:
        assert b.views.shape == (2, 4, 3, 32, 32) and b.label.tolist() == [-1] * 4
        seen += b.index.tolist()
    assert len(seen) == len(set(seen)) == len(files) // 4 * 4 and set(seen) <= set(range(len(files)))


@pytest.mark.slow
def test_train_on_unlabelled_images_mine_them_and_refuse_to_score(folders, tmp_path):
    """train.py says what it recognised and turns the kNN monitor off; mining.mine and --sepp-pairs train on
    the same folder; eval.knn / linear / semisup refuse in one line with a hint; progress in a file is lines."""
    root, files = folders["flat"]
    out = tmp_path / "run"
    r = run(["train.py", *BARS, *SMALL, "--data", root, "--epochs", "1", "--knn-every", "0", "--out", str(out)],
            env={"PROGRESS_EVERY_S": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0] == f"data: unlabelled images (flat: label -1) in {root}"
    assert "kNN monitor off: unlabelled images have no labels" in r.stdout and "done: no kNN" in r.stdout
    bars = [x for x in lines if x.startswith("epoch 1/1: ")]
    assert bars and "\r" not in r.stdout and all(" it/s" in x for x in bars)
    assert bars[0].startswith("epoch 1/1: 1/3 (33%), ") and " left" in bars[0]
    assert bars[-1].startswith("epoch 1/1: 3/3 (100%), ") and " in all, loss=" in bars[-1]
    pairs = tmp_path / "pairs.pt"
    m = run_here(["-m", "mining.mine", "--encoder", str(out / "last.pt"), "--data", root, "--out", str(pairs),
                  "--k", "3", "--no-progress"])
    assert m.returncode == 0, m.stderr[-2000:]
    assert "mining quality" not in m.stdout   # no labels: no precision to report
    saved = torch.load(pairs, weights_only=False)
    assert saved["ids"].shape == (len(files), 3)
    s = run_here(["train.py", *TINY, *SMALL, "--data", root, "--epochs", "1", "--sepp-pairs", str(pairs),
                  "--out", str(tmp_path / "sepp")])
    assert s.returncode == 0, s.stderr[-2000:]
    assert "of samples paired, no labels to check them against" in s.stdout
    for ev in ("knn", "linear", "semisup"):
        e = run_here(["-m", f"eval.{ev}", "--checkpoint", str(out / "last.pt")])
        assert e.returncode == 2 and e.stderr.strip().count("\n") == 0, (ev, e.stderr[-1000:])
        assert e.stderr.startswith(f"error: scoring needs labels, and {root} holds unlabelled images: point --data "
                                   "at a labelled set")


def test_an_image_folder_tree_keeps_its_class_labels(tmp_path):
    good, _ = make_image_folder(str(tmp_path / "tree"), per_class=3, classes=3, bad=False)
    name, found = recognise(None, str(tmp_path / "tree"))
    assert (name, found) == ("imagefolder", f"a class-per-folder tree (3 classes) in {tmp_path / 'tree'}")
    src = open_source(name, str(tmp_path / "tree"), True)
    assert src.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and src.files == good
    unl = open_source("images", str(tmp_path / "tree"), True)   # asked for: the same images without labels
    assert unl.files == good and set(unl.labels.tolist()) == {-1}


def layouts(tmp_path):
    """One folder of each kind recognise() knows, with what it must say."""
    d = {}
    fm = tmp_path / "fm"
    fm.mkdir()
    with open(fm / "train-images-idx3-ubyte", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (1).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + bytes(4))
    d["fashion-mnist"] = (fm, "Fashion-MNIST idx files")
    (tmp_path / "c10" / "cifar-10-batches-py").mkdir(parents=True)
    d["cifar10"] = (tmp_path / "c10", "CIFAR-10 batches")
    (tmp_path / "stl" / "stl10_binary").mkdir(parents=True)
    d["stl10"] = (tmp_path / "stl", "STL-10 binaries")
    write_jpegs([str(tmp_path / "inet" / s / c / "a.jpg") for s in ("train", "val") for c in ("n01", "n02")])
    d["imagenet"] = (tmp_path / "inet", "an ImageNet layout (train/ and val/)")
    write_jpegs([str(tmp_path / "tree" / c / "deep" / "a.jpg") for c in ("cat", "dog")])
    d["tree"] = (tmp_path / "tree", "a class-per-folder tree (2 classes)")
    write_jpegs([str(tmp_path / "flat" / f"{i}.png") for i in range(2)])
    d["flat"] = (tmp_path / "flat", "unlabelled images (flat: label -1)")
    write_jpegs([str(tmp_path / "nest" / "a.jpg"), str(tmp_path / "nest" / "sub" / "b.jpg")])
    d["nested"] = (tmp_path / "nest", "unlabelled images (nested: label -1)")
    with open(tmp_path / "list.txt", "w") as f:
        f.write("flat/0.png 0\nflat/1.png 1\n")
    d["filelist"] = (tmp_path / "list.txt", "a file list")
    return d


EXPECT = {"fashion-mnist": "fashion-mnist", "cifar10": "cifar10", "stl10": "stl10", "imagenet": "imagefolder",
          "tree": "imagefolder", "flat": "images", "nested": "images", "filelist": "filelist"}


def test_the_dataset_is_recognised_from_data(tmp_path):
    for kind, (path, what) in layouts(tmp_path).items():
        assert recognise(None, str(path)) == (EXPECT[kind], f"{what} in {path}"), kind
        assert recognise(EXPECT[kind], str(path))[0] == EXPECT[kind]   # an explicit --dataset that agrees
    assert recognise(None, None) == ("fashion-mnist", f"fashion-mnist in {FASHION}")


def test_a_dataset_that_disagrees_with_data_is_one_line(tmp_path):
    d = layouts(tmp_path)
    with pytest.raises(UsageError) as e:
        recognise("imagefolder", str(d["flat"][0]))
    assert re.fullmatch(r"--dataset imagefolder, but --data \S+flat holds unlabelled images \(flat: label -1\): drop "
                        r"--dataset to use it as images, or point --data at imagefolder data", e.value.for_cli())
    assert str(e.value).startswith("`dataset` imagefolder, but `data` ")   # a Python caller reads its arguments
    with pytest.raises(UsageError, match="`dataset` cifar10, but `data` .* holds Fashion-MNIST idx files"):
        recognise("cifar10", str(d["fashion-mnist"][0]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no dataset recognised \(looked for a file list; Fashion-MNIST idx files; "
                       r"CIFAR-10 .*; images at the top level .*; an ImageNet layout .*; class folders of images\)"):
        recognise(None, str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="holds CIFAR-10 batches itself: point `data` at the folder above it"):
        (tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")
        recognise(None, str(tmp_path / "c10" / "cifar-10-batches-py"))
    for argv, said in ((["train.py", "--dataset", "imagefolder", "--data", str(d["flat"][0])], "holds unlabelled"),
                       (["-m", "loaders.prepare", "--dataset", "stl10", "--data", str(d["tree"][0]), "--out",
                         str(tmp_path / "x.beton")], "holds a class-per-folder tree (2 classes)"),
                       (["-m", "mining.mine", "--encoder", "x.pt", "--dataset", "cifar10", "--data", str(d["flat"][0]),
                         "--out", str(tmp_path / "p.pt")], "--dataset cifar10, but --data"),
                       (["train.py", "--data", str(tmp_path / "empty")], "no dataset recognised")):
        # mining.mine in a process of its own (no Traceback reaches the terminal), the rest in this one
        r = run(argv) if argv[1] == "mining.mine" else run_here(argv)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, (argv, r.stderr)
        assert said in r.stderr, (argv, r.stderr)


def test_a_train_folder_without_val_is_never_scored_on_itself(tmp_path):
    write_jpegs([str(tmp_path / "inet" / "train" / c / "a.jpg") for c in ("n01", "n02")])
    assert recognise(None, str(tmp_path / "inet"))[0] == "imagefolder"
    assert len(open_source("imagefolder", str(tmp_path / "inet"), True)) == 2
    with pytest.raises(UsageError, match="train/ has no val/ beside it to score on"):
        open_source("imagefolder", str(tmp_path / "inet"), False)


def test_a_train_folder_with_test_beside_it_scores_on_test(tmp_path):
    """CIFAR-10's JPEG folders (train/ and test/, no val/): test/ is the split scored, in the same class order."""
    write_jpegs([str(tmp_path / "c10" / s / c / f"{s}{i}.jpg") for s in ("train", "test") for c in ("cat", "dog")
                 for i in range(2 if s == "train" else 1)])
    assert recognise(None, str(tmp_path / "c10")) == ("imagefolder", f"an ImageNet layout (train/ and test/) in "
                                                                     f"{tmp_path / 'c10'}")
    scored = open_source("imagefolder", str(tmp_path / "c10"), False)
    assert len(scored) == 2 and scored.classes == ["cat", "dog"]
    assert all("/test/" in p for p in scored.files), scored.files[:2]


@needs_fashion
def test_prepare_and_the_evaluations_say_what_they_recognised(tmp_path, capsys):
    from eval.features import eval_sources
    fm = tmp_path / "fm"
    fm.mkdir()
    for f in os.listdir(FASHION):
        os.symlink(os.path.join(FASHION, f), fm / f)
    train, test, _ = eval_sources({"dataset": "images", "data": "/elsewhere", "val_split": 0}, None, str(fm))
    assert len(train) == 60000 and len(test) == 10000
    assert capsys.readouterr().out == f"data: Fashion-MNIST idx files in {fm}\n"
    from loaders import prepare
    assert prepare.main(["--data", str(fm), "--subset", "16", "--out", str(tmp_path / "x.beton"), "--workers", "1",
                         "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"data: Fashion-MNIST idx files in {fm}\n")


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_is_a_bar_and_in_a_file_plain_lines(monkeypatch):
    from tqdm import tqdm
    assert isinstance(progress_mod.progress(range(3), file=Tty()), tqdm)
    monkeypatch.setattr(progress_mod, "EVERY_S", 0.0)
    f = io.StringIO()
    assert list(progress_mod.progress(range(4), desc="embed", file=f, unit="batch")) == [0, 1, 2, 3]
    lines = f.getvalue().splitlines()
    assert "\r" not in f.getvalue() and len(lines) == 5
    assert lines[0].startswith("embed: 1/4 (25%), ") and " batch/s, " in lines[0] and lines[0].endswith(" left")
    assert lines[-1].startswith("embed: 4/4 (100%), ") and lines[-1].endswith(" in all")
    monkeypatch.setattr(progress_mod, "EVERY_S", 30.0)   # short work in a file: nothing at all
    f = io.StringIO()
    bar = progress_mod.progress(total=100, desc="epoch 1/1", file=f)
    for _ in range(100):
        bar.update(1)
    bar.set_postfix(loss="1.0")
    bar.close()
    assert f.getvalue() == ""


@needs_fashion
def test_an_evaluation_writes_no_bar_redraws_to_a_file(tmp_path):
    r = run_here(["train.py", *TINY, *SMALL, "--subset", "256", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert r.returncode == 0, r.stderr[-2000:]
    e = run_here(["-m", "eval.knn", "--checkpoint", str(tmp_path / "r" / "last.pt"), "--n-train", "512",
                  "--n-test", "256"])
    assert e.returncode == 0, e.stderr[-2000:]
    assert "\r" not in e.stdout + e.stderr and len(e.stdout + e.stderr) < 2000, e.stdout + e.stderr


def test_unreadable_images_in_an_unlabelled_folder_are_reported_and_skipped(tmp_path, capsys):
    files = write_jpegs([str(tmp_path / "u" / f"{i}.jpg") for i in range(6)])
    shutil.copy(files[0], tmp_path / "u" / "zz_cut.jpg")
    with open(tmp_path / "u" / "zz_cut.jpg", "r+b") as f:
        f.truncate(200)
    from loaders import prepare
    beton = tmp_path / "u.beton"
    assert prepare.main(["--data", str(tmp_path / "u"), "--out", str(beton), "--workers", "1", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "checked 7 images: 1 unreadable" in said and "6 images" in said and "skipped 1" in said
    assert "zz_cut.jpg" in open(f"{beton}.report.txt").read()


def test_a_missing_path_and_a_binary_file_list_are_one_line(tmp_path):
    r = run_here(["train.py", "--data", str(tmp_path / "nothing_here")])
    assert r.returncode == 2 and r.stderr == f"error: --data {tmp_path / 'nothing_here'}: no such file or directory\n"
    (tmp_path / "x.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UsageError, match="not a text file list"):
        open_source(recognise(None, str(tmp_path / "x.bin"))[0], str(tmp_path / "x.bin"), True)
