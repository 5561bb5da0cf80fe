"""A .beton is the data set it holds. loaders.prepare writes FILE.beton and its sidecar FILE.beton.json (the data
set's kind and folder, split, classes, mean and std, subset and skipped files); for a run on the .beton the
sidecar is the source of truth:

- beton_meta: the sidecar, checked against the .beton and against the `dataset`, `data` and `subset` a caller
  gives (they may be left out; one that contradicts the sidecar is an error naming both). A .beton with no
  sidecar takes them from `data`, which it then needs.
- describe: what the .beton holds, in one line: the count of images, and how it came from its source (a
  subset, files skipped), or an error where the counts do not add up.
- BetonSource: the .beton's own images and labels as a source (`load(i)` decodes sample i from the file), so
  the kNN bank and SePP's embedding pass see exactly the images that train.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from engine.errors import UsageError
from loaders.datasets import DEFAULT_DATA, open_source, recognise

JPG = 0   # ffcv.fields.rgb_image.IMAGE_MODES['jpg']: the other mode (1) is raw uint8 [H, W, 3]
NEEDED = ("dataset", "mean", "std")


def sidecar_path(beton: str) -> str:
    return f"{beton}.json"


def read_sidecar(beton: str) -> dict | None:
    """The sidecar of `beton` as loaders.prepare wrote it; None if there is none."""
    path = sidecar_path(beton)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"`beton` {beton}: its sidecar {path} cannot be read ({type(e).__name__}): write the "
                         ".beton again with loaders.prepare")
    missing = [k for k in NEEDED if k not in meta]
    if missing:
        raise UsageError(f"`beton` {beton}: its sidecar {path} lacks {', '.join(missing)}: write the .beton again "
                         "with loaders.prepare")
    return meta


def data_of(meta: dict) -> str | None:
    """The folder (or file list) the .beton was written from; for Fashion-MNIST, its default folder."""
    return meta.get("data") or DEFAULT_DATA.get(meta["dataset"])


def beton_meta(beton: str, dataset: str | None = None, data: str | None = None, subset: int = 0) -> dict:
    """The sidecar of `beton` (num_samples: the images the file holds), after checking that `dataset`, `data`
    and `subset`, where given, agree with it. With no sidecar: what `data` holds, taken as the training
    split the .beton was written from (sidecar False)."""
    from loaders.ffcv_loader import check_beton
    n = int(check_beton(beton).num_samples)
    meta = read_sidecar(beton)
    if meta is None:
        return _meta_from_data(beton, dataset, data) | {"num_samples": n}
    kind, source = meta["dataset"], data_of(meta)
    said = f"(its sidecar {sidecar_path(beton)}): the .beton is the data set, drop"
    if dataset is not None and dataset != kind:
        raise UsageError(f"`dataset` {dataset}, but `beton` {beton} holds {kind} {said} `dataset`")
    if data is not None and not (source and os.path.realpath(data) == os.path.realpath(source)):
        raise UsageError(f"`data` {data}, but `beton` {beton} was written from {source} {said} `data`")
    if subset and subset != meta.get("subset"):
        holds = f"a subset of {meta['subset']}" if meta.get("subset") else "the whole set"
        raise UsageError(f"`subset` {subset}, but `beton` {beton} holds {holds} {said} `subset` (or write a .beton "
                         f"of that subset)")
    if meta.get("num_samples", n) != n:
        raise UsageError(f"`beton` {beton} holds {n} images, its sidecar {sidecar_path(beton)} says "
                         f"{meta['num_samples']}: the sidecar is another write's; write the .beton again")
    return meta | {"num_samples": n, "sidecar": True}


def _meta_from_data(beton: str, dataset: str | None, data: str | None) -> dict:
    if data is None:
        raise UsageError(f"`beton` {beton} has no sidecar ({sidecar_path(beton)}) to say what data set it holds: "
                         "give `data`, the data set it was written from (or write it again with loaders.prepare)")
    kind, _ = recognise(dataset, data)
    src = open_source(kind, data, True)
    return {"dataset": kind, "data": os.path.abspath(data), "split": "train", "num_classes": int(src.num_classes),
            "classes": getattr(src, "classes", None), "mean": list(src.mean), "std": list(src.std), "sidecar": False}


def describe(beton: str, meta: dict) -> str:
    """What the .beton holds, in words: its images, their data set, and how many of the source's it kept (a
    subset, unreadable files skipped). Counts that do not add up are an error, not a note."""
    n, kind, where = meta["num_samples"], meta["dataset"], data_of(meta)
    classes = f", {meta['num_classes']} classes" if meta.get("num_classes") else ""
    what = f"{beton}: {n} images of {kind} in {where}{classes}"
    if not meta["sidecar"]:
        return what + " (no sidecar: as its data set says)"
    total, subset, skipped = meta.get("source_samples"), meta.get("subset") or 0, meta.get("skipped") or 0
    parts = [f"a subset of {total or 'the source'} (seed {meta.get('seed', 0)})"] if subset else []
    parts += [f"{skipped} unreadable images skipped"] if skipped else []
    if total is not None:
        written = min(subset, total) if subset else total
        if written - skipped != n:
            raise UsageError(f"`beton` {beton} holds {n} images, but its sidecar counts {written} written less "
                             f"{skipped} skipped: the sidecar is another write's; write the .beton again")
        parts = parts or ["every image of its source"]
    return what + (f": {', '.join(parts)}" if parts else "")


class BetonSource:
    """The images and labels of a .beton, read from the file as any source is read: load(i) -> (uint8
    [3, H, W], label) of sample i (a JPEG decoded with libjpeg-turbo, or raw pixels). The data set's name,
    classes, mean and std come from `meta` (beton_meta)."""

    def __init__(self, path: str, meta: dict):
        from loaders.ffcv_loader import check_beton
        reader = check_beton(path)
        column = {name: f"f{k}" for k, name in enumerate(reader.field_names)}
        self.path, self.meta, self._file = path, meta, None
        self.image_fields = np.array(reader.metadata[column["image"]])   # mode, width, height, data_ptr
        self.labels = np.asarray(reader.metadata[column["label"]], dtype=np.int64)
        alloc = np.sort(reader.alloc_table, order="ptr")
        self._ptr, self._size = np.asarray(alloc["ptr"]), np.asarray(alloc["size"])
        self.name, self.mean, self.std = meta["dataset"], tuple(meta["mean"]), tuple(meta["std"])
        self.classes = list(meta.get("classes") or [])
        labelled = self.labels[self.labels >= 0]
        self.num_classes = int(meta.get("num_classes") or (labelled.max() + 1 if len(labelled) else 0))

    def __len__(self):
        return len(self.labels)

    def __getstate__(self):   # DataLoader workers map the file again
        return self.__dict__ | {"_file": None}

    def load(self, i: int):
        from torchvision.io import ImageReadMode, decode_jpeg
        if self._file is None:
            self._file = np.memmap(self.path, dtype=np.uint8, mode="r")
        m = self.image_fields[i]
        ptr = int(m["data_ptr"])
        size = int(self._size[np.searchsorted(self._ptr, ptr)])
        data = np.array(self._file[ptr:ptr + size])
        if m["mode"] == JPG:
            img = decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB)
        else:
            h, w = int(m["height"]), int(m["width"])
            img = torch.from_numpy(data[:h * w * 3].reshape(h, w, 3)).permute(2, 0, 1).contiguous()
        return img, int(self.labels[i])


def rows_of(source, beton: str) -> np.ndarray | None:
    """The .beton rows a source stands for, in its order: None for all of `beton` (a BetonSource of it), the
    kept rows of a Subset of one; else UsageError (another source, or another .beton's)."""
    from loaders.datasets import Subset
    base, keep = (source.src, source.keep) if isinstance(source, Subset) else (source, None)
    if not isinstance(base, BetonSource):
        return _same_samples(source, beton)
    if os.path.realpath(base.path) != os.path.realpath(beton):
        raise UsageError(f"`beton` {beton}: the source given is another .beton's ({base.path})")
    return keep


def _same_samples(source, beton: str) -> None:
    """A source that is not read from the .beton: its samples must be the .beton's, one for one (the count and
    every label), or the batches' indices would name other images."""
    from loaders.ffcv_loader import check_beton
    reader = check_beton(beton)
    labels = np.asarray(reader.metadata[f"f{reader.field_names.index('label')}"], dtype=np.int64)
    if len(labels) == len(source) and np.array_equal(labels, np.asarray(source.labels)):
        return None
    meta = read_sidecar(beton)
    how = f" ({describe(beton, beton_meta(beton))})" if meta is not None else ""
    raise UsageError(f"`beton` {beton} holds {len(labels)} images{how}, the source given {len(source)}"
                     f"{' with other labels' if len(labels) == len(source) else ''}: train on the .beton's own "
                     "images (loaders.beton.BetonSource)")
