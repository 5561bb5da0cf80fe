"""What a run trains on and what its scores are measured on, for every data set and loader: the one place that
decides it, so that train.py's kNN monitor, eval.knn, eval.linear and mining.mine agree, and a score is never
measured on the images it was fitted to (the kNN bank, the probe's training set, the encoder's).

The scored images, in this order:
- `val_beton` (with `beton`): that .beton's images;
- `val_split` N > 0: N samples held out of the training set (the same for every run and seed);
- the data set's own split: the test split of Fashion-MNIST, CIFAR-10 and STL-10, an ImageNet layout's val/, the
  val/ beside a class tree that is a train/ folder, a file list's val list; for a .beton, that of the data set
  its sidecar names, where it is on this machine (with the .beton's classes);
- otherwise a fixed part of the training set (1 in AUTO_SHARE, at most AUTO_MAX; the same for every run and
  seed), held out of training and of the kNN bank, and said.
Unlabelled images have nothing to score: `scored` is None.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

from engine.errors import UsageError
from loaders.datasets import NoValSplit, Subset, carve, open_source, recognise

AUTO_SHARE, AUTO_MAX = 10, 10_000


@dataclass(frozen=True)
class DataSpec:
    """A run's data: the data set (`dataset` at `data`, or the .beton `beton`), its training subset, and what
    is held out to score (val_split: that many training samples; val_beton: a .beton of the val split)."""
    dataset: str | None = None
    data: str | None = None
    subset: int = 0
    seed: int = 0
    val_split: int = 0
    beton: str | None = None
    val_beton: str | None = None

    @classmethod
    def from_args(cls, args) -> "DataSpec":
        """train.py's flags: the .beton is the data set with `loader` ffcv."""
        ffcv = getattr(args, "loader", None) == "ffcv"
        return cls(args.dataset, args.data, args.subset, args.seed, args.val_split or 0,
                   beton=args.beton if ffcv else None, val_beton=getattr(args, "val_beton", None) if ffcv else None)

    @classmethod
    def of_run(cls, cfg: dict) -> "DataSpec":
        """A trained run's data set for its evaluations: the whole training set (no subset) with the samples the
        run held out; a .beton run's .beton, which is its data set (an older config's dataset is not asked)."""
        if cfg.get("loader") == "ffcv" and cfg.get("beton"):
            return cls(val_split=cfg.get("val_split") or 0, beton=cfg["beton"], val_beton=cfg.get("val_beton"))
        dataset = None if cfg.get("dataset") == "images" else cfg.get("dataset")   # a class tree: its labels back
        return cls(dataset, cfg.get("data"), val_split=cfg.get("val_split") or 0)


@dataclass
class Splits:
    """train: what trains, and the kNN bank (the probe's training set); scored: what is scored (None: no labels).
    val_split: the training samples held out (a run records it, so its evaluations hold out the same ones);
    note: where the scored images come from, where that is not the data set's own split of `data`;
    auto: held out because the data set has no split of its own."""
    train: Any
    scored: Any
    val_split: int = 0
    note: str | None = None
    auto: bool = False

    def record(self) -> dict:
        """What a run trains and scores on, for its config: the normalisation, the bank and the scored split."""
        scored = self.scored
        return {"norm": {"mean": [float(x) for x in self.train.mean], "std": [float(x) for x in self.train.std]},
                "scoring": {"on": self.note or "the data set's own split", "bank": len(self.train),
                            "scored": 0 if scored is None else len(scored),
                            "classes": None if scored is None else classes_of(scored)}}


def recognised(spec: DataSpec) -> tuple[DataSpec, str]:
    """(spec with its data set named, what it holds in words): a .beton's from its sidecar (loaders/beton.py),
    which a `dataset`, `data` or `subset` given must agree with; else what `data` holds."""
    if spec.beton:
        from loaders.beton import beton_meta, describe
        meta = beton_meta(spec.beton, spec.dataset, spec.data, spec.subset)
        return replace(spec, dataset=meta["dataset"], data=meta.get("data")), describe(spec.beton, meta)
    dataset, found = recognise(spec.dataset, spec.data)
    return replace(spec, dataset=dataset), found


def open_splits(spec: DataSpec) -> Splits:
    """The training and the scored images of `spec` (its dataset named: recognised)."""
    if spec.beton:
        return _beton_splits(spec)
    if spec.val_beton:
        raise UsageError("`val_beton` scores a run on a .beton: give it with `beton` (`loader` ffcv)")
    ds, data = spec.dataset, spec.data
    if ds == "images":   # no labels, nothing to score (a val_split still keeps its samples out of training)
        return Splits(open_source(ds, data, True, spec.subset, spec.seed, spec.val_split), None, spec.val_split)
    if not spec.val_split:
        try:
            scored = open_source(ds, data, False)
        except NoValSplit:
            scored = None
        if scored is not None:
            return Splits(open_source(ds, data, True, spec.subset, spec.seed), scored)
    full = open_source(ds, data, True)
    return _held_out(full, spec, f"{data} has no val split")


def auto_count(n: int) -> int:
    """How many of n training samples are held out to score where the data set has no split of its own."""
    if n < 2:
        raise UsageError(f"{n} labelled image cannot be both trained on and scored: add images, or a val split")
    return min(AUTO_MAX, max(1, n // AUTO_SHARE))


def _held_out(full, spec: DataSpec, why: str) -> Splits:
    """`full` (a whole training split) less spec.val_split samples, or auto_count's where it is 0, which are scored."""
    k = spec.val_split or auto_count(len(full))
    train, scored = carve(full, True, spec.subset, spec.seed, k), carve(full, False, val_split=k)
    if spec.val_split:
        return Splits(train, scored, k, f"{k} of the {len(full)} training images held out (the same for every run "
                                        "and seed)")
    return Splits(train, scored, k, f"{why}: {k} of its {len(full)} images held out ({k / len(full):.0%}, the same "
                                    "for every run and seed), neither trained on nor in the kNN bank", auto=True)


def _beton_splits(spec: DataSpec) -> Splits:
    """A .beton's: its own images train; scored: a val .beton, held-out rows, or its data set's own split."""
    from loaders.beton import BetonSource, beton_meta
    meta = beton_meta(spec.beton, spec.dataset, spec.data, spec.subset)
    src, whole = BetonSource(spec.beton, meta), replace(spec, subset=0)   # the .beton is the subset already
    if spec.val_beton:
        return _val_beton(src, spec)
    if meta["dataset"] == "images" or not (src.labels >= 0).any():
        return Splits(carve(src, True, val_split=spec.val_split), None, spec.val_split)
    if spec.val_split:
        return _held_out(src, whole, "")
    own, why = _own_split(src, meta)
    if own is None:
        return _held_out(src, whole, why)
    return Splits(src, own, 0, f"the {'test' if meta['dataset'] in ('fashion-mnist', 'cifar10', 'stl10') else 'val'} "
                               f"split of {own_place(own, meta)} ({len(own)} images)")


def _own_split(src, meta: dict):
    """(the scored split of the data set the .beton was written from, None) or (None, why there is none)."""
    from loaders.beton import data_of
    where = data_of(meta)
    if meta.get("split", "train") != "train":
        return None, f"{src.path} holds the {meta['split']} split of {where}"
    if not where or not os.path.exists(where):
        return None, f"its data set ({where}) is not on this machine"
    try:
        own = open_source(meta["dataset"], meta.get("data"), False)
    except NoValSplit:
        return None, f"{where} has no val split"
    classes = classes_of(own)
    if own.num_classes != src.num_classes or (src.classes and classes and classes != src.classes):
        raise UsageError(f"`beton` {src.path}: the scored split of {where} has {own.num_classes} classes, the .beton "
                         f"{src.num_classes}: give `val_beton` (a .beton of the val split) or `val_split` N")
    return own, None


def _val_beton(src, spec: DataSpec) -> Splits:
    from loaders.beton import BetonSource, beton_meta, read_sidecar
    path = spec.val_beton
    if spec.val_split:
        raise UsageError(f"`val_beton` {path} and `val_split` {spec.val_split} both say what is scored: give one")
    if not os.path.isfile(path) or os.path.realpath(path) == os.path.realpath(spec.beton):
        raise UsageError(f"`val_beton` {path}: " + ("is the training .beton" if os.path.isfile(path) else "no such "
                         "file") + " (write the val split with loaders.prepare --split val --out FILE)")
    meta = read_sidecar(path)
    if meta is None:
        raise UsageError(f"`val_beton` {path} has no sidecar ({path}.json) to say what it holds: write it with "
                         "loaders.prepare --split val")
    val = BetonSource(path, beton_meta(path))
    if val.name != src.name or val.num_classes != src.num_classes or (val.classes and val.classes != src.classes):
        raise UsageError(f"`val_beton` {path} holds {val.name} ({val.num_classes} classes), `beton` {spec.beton} "
                         f"{src.name} ({src.num_classes} classes): give the val .beton of the same data set")
    return Splits(src, val, 0, f"the val .beton {path} ({len(val)} images)")


def classes_of(src) -> list | None:
    """The class names of a source (or a Subset of one), where it has them."""
    base = src.src if isinstance(src, Subset) else src
    return list(getattr(base, "classes", None) or []) or None


def own_place(own, meta: dict) -> str:
    """Where a data set's own scored split lives, in words: the folder of its images, else the data set."""
    from loaders.beton import data_of
    files = getattr(own, "files", None)
    return os.path.commonpath(files) if files and own.num_classes > 1 else str(data_of(meta))
