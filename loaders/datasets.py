"""Image sources on disk: Fashion-MNIST (Debian idx files or torchvision raw layout), ImageFolder/ImageNet
layout, a folder of unlabelled images (any depth), a file list, CIFAR-10 and STL-10 (torchvision layouts, when
present). Nothing is downloaded. `recognise` tells which of them a --data path holds.

A source gives `load(i) -> (uint8 tensor [C, H, W], label)`, `len()`, `labels` (np.int64 [N]),
`num_classes`, and the normalization constants of the dataset.
"""
from __future__ import annotations

import gzip
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import DataError, UsageError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Debian's dataset-fashion-mnist; FASHION_MNIST_DIR names another folder of its idx files (a GPU host has none)
FASHION_DIR = os.environ.get("FASHION_MNIST_DIR") or "/usr/share/datasets/fashion-mnist"
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


@dataclass
class ArraySource:
    """Images held in memory as uint8 [N, H, W] or [N, H, W, C]."""
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    mean: tuple
    std: tuple
    name: str

    def __len__(self):
        return len(self.images)

    def load(self, i: int):
        a = torch.from_numpy(self.images[i])
        return (a.unsqueeze(0) if a.ndim == 2 else a.permute(2, 0, 1)), int(self.labels[i])

DEFAULT_RES = {"fashion-mnist": 28, "cifar10": 32, "stl10": 96}   # a set's native size; else 224


class FolderSource:
    """ImageFolder layout: root/<class>/<image>. Decodes with torchvision.io (libjpeg-turbo) on the CPU."""

    def __init__(self, root: str):
        classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
        self.files, labels = [], []
        for c, name in enumerate(classes):
            for dirpath, _, names in sorted(os.walk(os.path.join(root, name))):
                for f in sorted(names):
                    if f.lower().endswith(IMAGE_EXT):
                        self.files.append(os.path.join(dirpath, f))
                        labels.append(c)
        if not self.files:
            raise UsageError(f"`data` {root}: no images found (expected {root}/<class>/<image>.jpg)")
        self.labels = np.asarray(labels, dtype=np.int64)
        empty = [c for k, c in enumerate(classes) if not (self.labels == k).any()]
        if empty:   # kept, so that class k is the k-th folder wherever the set is read
            print(f"note: {len(empty)} class folder(s) of {root} hold no images ({', '.join(empty[:3])}"
                  f"{', ...' if len(empty) > 3 else ''}): empty classes", file=sys.stderr, flush=True)
        self.classes, self.num_classes = classes, len(classes)
        self.mean, self.std, self.name = IMAGENET_MEAN, IMAGENET_STD, "imagefolder"

    def __len__(self):
        return len(self.files)

    def load(self, i: int):
        from torchvision.io import ImageReadMode, decode_image, read_file
        path = self.files[i]
        try:
            return decode_image(read_file(path), mode=ImageReadMode.RGB), int(self.labels[i])
        except Exception as e:  # torchvision raises RuntimeError for corrupt/truncated data
            raise DataError(f"cannot decode {path}: {str(e).splitlines()[0]} "
                            f"(remove it, or list bad files with: python -m loaders.prepare --check --data DIR)")

    def load_reduced(self, i: int, reduce):
        """(uint8 [3, h, w], label, (H, W)): image i decoded whole at 1/s of its size (H, W), where
        s = reduce(H, W) is 1, 2, 4 or 8; a JPEG is then decoded by libjpeg at that DCT scale (a fraction of a
        full decode's work), any other format at full size. DataError if the file cannot be decoded."""
        from PIL import Image
        path = self.files[i]
        try:
            with Image.open(path) as im:
                H, W = im.height, im.width
                s = reduce(H, W)
                if s > 1 and im.format == "JPEG":
                    im.draft("RGB", (-(-W // s), -(-H // s)))   # libjpeg's scaled size: ceil(side / s)
                a = np.array(im.convert("RGB"))   # writable: torch.from_numpy warns otherwise
        except Exception as e:   # PIL: OSError (truncated), UnidentifiedImageError (not an image), ...
            raise DataError(f"cannot decode {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                            f"(remove it, or list bad files with: python -m loaders.prepare --check --data DIR)")
        return torch.from_numpy(a).permute(2, 0, 1), int(self.labels[i]), (H, W)


class UnlabelledSource(FolderSource):
    """Images at any depth under root, without labels (label -1): what self-supervised training needs."""

    def __init__(self, root: str):
        self.files = sorted(os.path.join(d, f) for d, _, names in os.walk(root, followlinks=True) for f in names
                            if f.lower().endswith(IMAGE_EXT) and not f.startswith("."))
        if not self.files:
            raise UsageError(f"`data` {root}: no images found ({', '.join(IMAGE_EXT)}, at any depth)")
        self.labels = np.full(len(self.files), -1, dtype=np.int64)
        self.classes, self.num_classes = [], 0
        self.mean, self.std, self.name = IMAGENET_MEAN, IMAGENET_STD, "images"


class NoLabels(UsageError):
    """An unlabelled source was asked for its labelled (test) split."""


class FileListSource(FolderSource):
    """A file list as DALI's readers take it: one "path label" per line (paths relative to the list's folder,
    or absolute; '#' starts a comment)."""

    def __init__(self, path: str):
        base = os.path.dirname(os.path.abspath(path))
        self.files, labels = [], []
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
        if any("\ufffd" in x for x in lines[:100]):
            raise UsageError(f"`data` {path}: not a text file list ('path label' lines)")
        for n, line in enumerate(lines, 1):
            line = line.split("#")[0].strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise UsageError(f"`data` {path}: line {n} is not 'path label': {line[:80]}")
            self.files.append(os.path.join(base, parts[0]))
            labels.append(int(parts[1]))
        if not self.files:
            raise UsageError(f"`data` {path}: the file list is empty")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1
        self.classes = [str(c) for c in range(self.num_classes)]
        self.mean, self.std, self.name = IMAGENET_MEAN, IMAGENET_STD, "filelist"


def read_idx(path: str) -> np.ndarray:
    """An idx file (optionally gzipped), as used by (Fashion-)MNIST."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:   # a damaged .gz
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e})")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise DataError(f"{path}: not an idx file of uint8")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated idx file ({arr.size} of {int(np.prod(shape))} values)")
    return arr.reshape(shape).copy()  # writable, so torch.from_numpy does not warn


def _find_idx(root: str, stem: str) -> str | None:
    for d in (root, os.path.join(root, "raw"), os.path.join(root, "FashionMNIST", "raw")):
        for ext in ("", ".gz"):
            p = os.path.join(d, stem + ext)
            if os.path.isfile(p):
                return p
    return None


def fashion_mnist(root: str, train: bool) -> ArraySource:
    split = "train" if train else "t10k"
    img, lab = _find_idx(root, f"{split}-images-idx3-ubyte"), _find_idx(root, f"{split}-labels-idx1-ubyte")
    if img is None or lab is None:
        raise UsageError(f"`data` {root}: no Fashion-MNIST idx files ({split}-images-idx3-ubyte[.gz]); "
                         f"on Debian: apt-get install dataset-fashion-mnist")
    return ArraySource(read_idx(img), read_idx(lab).astype(np.int64), num_classes=10, mean=(0.286,) * 3,
                       std=(0.353,) * 3, name="fashion-mnist")


def cifar10(root: str, train: bool) -> ArraySource:
    from torchvision.datasets import CIFAR10
    try:
        ds = CIFAR10(root, train=train, download=False)
    except RuntimeError:
        raise UsageError(f"`data` {root}: no CIFAR-10 (expected {root}/cifar-10-batches-py)")
    return ArraySource(ds.data, np.asarray(ds.targets, np.int64), num_classes=10, mean=(0.491, 0.482, 0.447),
                       std=(0.247, 0.243, 0.262), name="cifar10")


def stl10(root: str, train: bool) -> ArraySource:
    from torchvision.datasets import STL10
    try:
        ds = STL10(root, split="train+unlabeled" if train else "test", download=False)
    except RuntimeError:
        raise UsageError(f"`data` {root}: no STL-10 (expected {root}/stl10_binary)")
    return ArraySource(ds.data.transpose(0, 2, 3, 1), ds.labels.astype(np.int64), num_classes=10,
                       mean=(0.441, 0.428, 0.387), std=(0.268, 0.261, 0.269), name="stl10")


def scored_folder(root: str) -> str | None:
    """The split beside train/ that a run scores on: val/, else test/ (CIFAR-10's JPEG folders); None: neither."""
    return next((os.path.join(root, s) for s in ("val", "test") if os.path.isdir(os.path.join(root, s))), None)


def folder(root: str, train: bool) -> FolderSource:
    if train:
        sub = os.path.join(root, "train")
        return FolderSource(sub if os.path.isdir(sub) else root)
    val = FolderSource(scored_folder(root) or val_folder(root))
    trained = os.path.join(root, "train") if os.path.isdir(os.path.join(root, "train")) else root
    classes = sorted(d.name for d in os.scandir(trained) if d.is_dir())   # as FolderSource numbers them
    if val.classes != classes:   # labels are class folders in sorted order: other folders, other labels
        raise UsageError(f"`data` {root}: its val split has {len(val.classes)} classes ({', '.join(val.classes[:3])} "
                         f"...), the training set {len(classes)} ({', '.join(classes[:3])} ...): give both the same "
                         "class folders")
    return val


class NoValSplit(UsageError):
    """A labelled source with no split of its own to score on: scoring it would score the training images on
    themselves (loaders/splits.py holds a part of them out instead)."""


def val_folder(root: str) -> str:
    """The val split of a class tree with no val/ inside: a val/ beside it when the tree is a train/ folder."""
    if os.path.isdir(os.path.join(root, "train")):
        raise NoValSplit(f"`data` {root}: train/ has no val/ beside it to score on, nor test/ (the training images "
                         "would score themselves): add val/<class>/ images, or turn the kNN monitor off (`knn_every` "
                         "-1)")
    here = os.path.abspath(root)
    beside = os.path.join(os.path.dirname(here), "val")
    if os.path.basename(here) == "train" and os.path.isdir(beside):
        return beside
    raise NoValSplit(f"`data` {root}: a class-per-folder tree with no val/ beside it to score on (the training "
                     "images would score themselves): put it in DIR/train with a DIR/val/<class>/ beside it, or "
                     "turn the kNN monitor off (`knn_every` -1)")


def images(root: str, train: bool) -> UnlabelledSource:
    if not train:
        raise NoLabels(f"--data {root}: unlabelled images have no labels to score against")
    return UnlabelledSource(root)


def filelist(path: str, train: bool) -> FileListSource:
    """--data LIST.txt (train) ; the test split is LIST with 'train' replaced by 'val' when that file exists."""
    if not train:
        other = path.replace("train", "val")
        if other == path or not os.path.isfile(other):
            raise NoValSplit(f"`data` {path}: no val list to score on (its name with 'train' made 'val'; the "
                             "training images would score themselves)")
        path = other
    return FileListSource(path)


DATASETS = {"fashion-mnist": fashion_mnist, "imagefolder": folder, "images": images, "filelist": filelist,
            "cifar10": cifar10, "stl10": stl10}
DEFAULT_DATA = {"fashion-mnist": FASHION_DIR}
# what detect() looks for, in its order
LOOKED_FOR = ("a file list", "Fashion-MNIST idx files", "CIFAR-10 batches (cifar-10-batches-py/)",
              "STL-10 binaries (stl10_binary/)", "images at the top level (unlabelled, read at any depth)",
              "an ImageNet layout (train/ and val/)", "class folders of images")


def _has_image(root: str) -> bool:
    for _, _, names in os.walk(root, followlinks=True):
        if any(f.lower().endswith(IMAGE_EXT) and not f.startswith(".") for f in names):
            return True
    return False


def detect(path: str) -> tuple[str, str]:
    """(dataset, what was found) for a --data path. Images directly in the folder make it unlabelled (read at
    any depth); a folder whose images all sit in subfolders is a class-per-folder tree (--dataset images reads
    such a tree without its labels)."""
    if os.path.isfile(path):
        return "filelist", "a file list"
    if not os.path.isdir(path):
        raise UsageError(f"`data` {path}: no such file or directory")
    if _find_idx(path, "train-images-idx3-ubyte") or _find_idx(path, "t10k-images-idx3-ubyte"):
        return "fashion-mnist", "Fashion-MNIST idx files"
    for name, folder_name, marker, what in (("cifar10", "cifar-10-batches-py", "data_batch_1", "CIFAR-10 batches"),
                                            ("stl10", "stl10_binary", "train_X.bin", "STL-10 binaries")):
        if os.path.isdir(os.path.join(path, folder_name)):
            return name, what
        if os.path.isfile(os.path.join(path, marker)):
            raise UsageError(f"`data` {path}: holds {what} itself: point `data` at the folder above it (it reads "
                             f"DIR/{folder_name})")
    entries = sorted(os.scandir(path), key=lambda e: e.name)
    if any(e.is_file() and e.name.lower().endswith(IMAGE_EXT) and not e.name.startswith(".") for e in entries):
        nested = any(e.is_dir() for e in entries)
        return "images", f"unlabelled images ({'nested' if nested else 'flat'}: label -1)"
    dirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    if "train" in dirs and _has_image(os.path.join(path, "train")):
        scored = next((f" and {d}/" for d in ("val", "test") if d in dirs), "")
        return "imagefolder", f"an ImageNet layout (train/{scored})"
    classes = [d for d in dirs if _has_image(os.path.join(path, d))]
    if classes:
        return "imagefolder", f"a class-per-folder tree ({len(classes)} classes)"
    raise UsageError(f"`data` {path}: no dataset recognised (looked for {'; '.join(LOOKED_FOR)})")


def recognise(dataset: str | None, data: str | None) -> tuple[str, str]:
    """(dataset, what --data holds, in words) for --dataset/--data: the dataset --data holds when --dataset is
    not given; an explicit --dataset that disagrees with it is one error line saying what was found."""
    if dataset is not None and dataset not in DATASETS:
        raise UsageError(f"`dataset` {dataset}: unknown (choose from {', '.join(DATASETS)})")
    if data is None:
        dataset = dataset or "fashion-mnist"
        return dataset, f"{dataset} in {DEFAULT_DATA[dataset]}" if dataset in DEFAULT_DATA else dataset
    if dataset is None:
        found, what = detect(data)
        return found, f"{what} in {data}"
    try:
        found, what = detect(data)
    except UsageError:   # nothing recognised: the named dataset's own reader says what it expected
        return dataset, f"{dataset} in {data}"
    if found != dataset and (dataset, found) != ("images", "imagefolder"):
        raise UsageError(f"`dataset` {dataset}, but `data` {data} holds {what}: drop `dataset` to use it as "
                         f"{found}, or point `data` at {dataset} data")
    return dataset, f"{what} in {data}" + (", read without its labels" if dataset != found else "")


def open_source(dataset: str, root: str | None, train: bool = True, subset: int = 0, seed: int = 0,
                val_split: int = 0):
    """The dataset named by --dataset at --data; a fixed random subset of `subset` samples if > 0.
    val_split > 0 carves a validation split of that many samples out of the training set (the same for
    every --seed): train=True gives the rest, train=False the validation split instead of the test split."""
    if dataset not in DATASETS:
        raise UsageError(f"`dataset` {dataset}: unknown (choose from {', '.join(DATASETS)})")
    root = root or DEFAULT_DATA.get(dataset)
    if not root:
        raise UsageError(f"`dataset` {dataset} needs `data` DIR")
    if dataset == "filelist":
        if not os.path.isfile(root):
            raise UsageError(f"`data` {root}: no such file (a list of 'path label' lines)")
    elif not os.path.isdir(root):
        raise UsageError(f"`data` {root}: no such directory")
    if dataset == "images" and not train:   # a validation split of unlabelled images has no labels either
        raise NoLabels(f"--data {root}: unlabelled images have no labels to score against")
    src = carve(DATASETS[dataset](root, train or val_split > 0), train, subset, seed, val_split)
    if len(src) == 0:
        raise UsageError(f"`data` {root}: the {dataset} {'train' if train else 'test'} split is empty")
    return src


def held_out(n: int, k: int) -> np.ndarray:
    """Mask of the k of n training samples held out as a validation split: it depends on n and k only, so it
    is the same for every run and --seed."""
    held = np.zeros(n, bool)
    held[np.random.default_rng([n, 17]).permutation(n)[:k]] = True
    return held


def carve(src, train: bool = True, subset: int = 0, seed: int = 0, val_split: int = 0):
    """The rows of a whole training split `src` that open_source gives: val_split > 0 holds that many out
    (held_out), train=True keeps the rest, train=False the held-out ones; then a fixed random `subset`."""
    if val_split > 0:
        if val_split >= len(src):
            raise UsageError(f"`val_split` {val_split}: the training set has only {len(src)} samples")
        held = held_out(len(src), val_split)
        src = Subset(src, np.flatnonzero(~held if train else held))
    if 0 < subset < len(src):
        src = Subset(src, np.sort(np.random.default_rng(seed).permutation(len(src))[:subset]))
    return src


class Subset:
    """Fixed rows of a source (a seeded random subset, or a split), renumbered 0..n-1: they are the training
    set. A subset of a subset keeps pointing at the underlying source (keep indexes it directly)."""

    def __init__(self, src, keep: np.ndarray):
        if isinstance(src, Subset):
            src, keep = src.src, src.keep[keep]
        self.src, self.keep = src, np.asarray(keep, dtype=np.int64)
        self.labels = np.asarray(src.labels)[self.keep]
        self.num_classes, self.mean, self.std, self.name = src.num_classes, src.mean, src.std, src.name

    def __len__(self):
        return len(self.keep)

    def load(self, i: int):
        return self.src.load(int(self.keep[i]))

    def load_reduced(self, i: int, reduce):
        return self.src.load_reduced(int(self.keep[i]), reduce)


def reducible(source) -> bool:
    """Whether a source decodes at a reduced (DCT) scale: load_reduced (image files)."""
    return isinstance(source.src if isinstance(source, Subset) else source, FolderSource)


def fingerprint(source) -> str:
    """A hash of the sample list (what sample i is, for every i): the dataset, the rows a subset or split
    keeps, the file paths of file-backed sources, and the labels. Mined pairs are tied to it."""
    import hashlib
    h = hashlib.sha1()
    base = source.src if isinstance(source, Subset) else source
    h.update(f"{base.name}:{len(source)}".encode())
    if isinstance(source, Subset):
        h.update(np.ascontiguousarray(source.keep, dtype=np.int64).tobytes())
    for f in getattr(base, "files", None) or []:   # class folder and file name: the same wherever --data is
        h.update("/".join(f.split(os.sep)[-2:]).encode())
    h.update(np.ascontiguousarray(source.labels, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def array_rows(source, rows=None) -> np.ndarray | None:
    """uint8 [len(rows), C, H, W] (all rows by default) of an in-memory source (ArraySource, or a Subset of
    one), read from its array with no decode; None for a source read from files."""
    base, keep = (source.src, source.keep) if isinstance(source, Subset) else (source, None)
    images = getattr(base, "images", None)
    if images is None:
        return None
    rows = np.arange(len(source)) if rows is None else np.asarray(rows)
    a = images[rows if keep is None else keep[rows]]
    return np.ascontiguousarray(a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2))

