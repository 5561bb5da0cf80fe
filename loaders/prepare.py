"""Convert a dataset to an FFCV .beton once (or only check its images).

    python -m loaders.prepare --dataset imagefolder --data /data/imagenet --out data/imagenet_train.beton \
        --max-resolution 256 --jpeg-quality 90 --write-mode proportion --compress-probability 0.5
    python -m loaders.prepare --out data/fashion_train.beton                 # built-in Fashion-MNIST
    python -m loaders.prepare --check --dataset imagefolder --data DIR        # list unreadable images only

Fields: `image` (RGBImageField; grayscale sources are stored as RGB), `label` (IntField) and `index`
(IntField: the sample's position in the .beton, 0..N-1, the id every loader reports in Batch.index).
Images that cannot be decoded (corrupt, truncated) are skipped, counted and listed in the report file
(OUT.report.txt); the rest are written. The .beton is written to OUT.tmp-PID and renamed at the end, so a
killed run never leaves a half-written OUT. OUT.json, the sidecar, records what was written: the data set (kind,
folder, split, classes, mean and std), the counts (the source's, the subset's, the skipped) and the settings. A
run on the .beton takes its data set from it (loaders/beton.py).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from engine.errors import parser_error_one_line
from engine.errors import UsageError, cli_main
from loaders.datasets import FolderSource, Subset, open_source, recognise

WRITE_MODES = ("jpg", "raw", "proportion", "smart")


def _base(src):
    return src.src if isinstance(src, Subset) else src


def _path(src, i: int) -> str | None:
    base = _base(src)
    j = int(src.keep[i]) if isinstance(src, Subset) else i
    return base.files[j] if isinstance(base, FolderSource) else None


def read_rgb(path: str) -> np.ndarray:
    """Decode a whole file with PIL into uint8 [H, W, 3]; raises on corrupt or truncated data."""
    from PIL import Image
    with Image.open(path) as im:
        im.load()  # PIL raises OSError for truncated files (LOAD_TRUNCATED_IMAGES is off)
        return np.asarray(im.convert("RGB"))


def _check_one(path: str):
    try:
        read_rgb(path)
        return None
    except Exception as e:  # any decoder failure is a bad file, reported with its reason
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def check(src, workers: int, progress: bool = True) -> list[tuple[int, str, str]]:
    """(index, path, reason) for every image of `src` that cannot be decoded. In-memory sources are fine."""
    if not isinstance(_base(src), FolderSource):
        return []
    paths = [_path(src, i) for i in range(len(src))]
    bad = []
    from engine.progress import progress as bar
    with mp.get_context("fork").Pool(max(1, workers)) as pool:
        results = pool.imap(_check_one, paths, chunksize=64)
        for i, reason in enumerate(bar(results, total=len(paths), desc="check", enabled=progress, unit="img",
                                       smoothing=0.05)):
            if reason is not None:
                bad.append((i, paths[i], reason))
    return bad


class Samples:
    """The images to write, as FFCV's writer wants them: item k -> (uint8 [H, W, 3], label, k)."""

    def __init__(self, src, keep: np.ndarray):
        self.src, self.keep = src, keep

    def __len__(self):
        return len(self.keep)

    def __getitem__(self, k):
        i = int(self.keep[k])
        path = _path(self.src, i)
        if path is not None:
            img = read_rgb(path)
        else:
            img = self.src.load(i)[0].permute(1, 2, 0).numpy()
            if img.shape[2] == 1:
                img = np.repeat(img, 3, axis=2)
        return np.ascontiguousarray(img), int(self.src.labels[i]), k


@dataclass(frozen=True)
class Encoding:
    """How FFCV's RGBImageField stores an image: write_mode (raw | jpg | smart | proportion), the longest side
    kept, the JPEG quality and, under `proportion`, the fraction stored as JPEG."""
    write_mode: str = "jpg"
    max_resolution: int | None = None
    jpeg_quality: int = 90
    compress_probability: float = 0.5


def write_beton(samples: Samples, out: str, enc: Encoding, *, workers: int, chunksize: int = 100,
                progress: bool = True):
    import functools

    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from tqdm.contrib.concurrent import thread_map

    from engine.progress import progress as bar
    ffcv.writer.tqdm = functools.partial(bar, enabled=progress, desc="write", unit="img")
    ffcv.writer.thread_map = functools.partial(thread_map, disable=True)   # a second of counting: no bar
    res = enc.max_resolution
    fields = {"image": RGBImageField(write_mode=enc.write_mode, max_resolution=res, jpeg_quality=enc.jpeg_quality,
                                     compress_probability=enc.compress_probability,
                                     smart_threshold=res and res ** 2 * 3 // 2),
              "label": IntField(), "index": IntField()}
    DatasetWriter(out, fields, num_workers=max(1, workers)).from_indexed_dataset(samples, chunksize=chunksize)


def build_parser():
    p = argparse.ArgumentParser(description="Write a dataset to an FFCV .beton (or check its images).")
    parser_error_one_line(p)
    a = p.add_argument
    a("--dataset", default=None, help="fashion-mnist | imagefolder | images (unlabelled) | filelist | cifar10 | "
      "stl10 (default: what --data holds; without --data, fashion-mnist)")
    a("--data", default=None, help="dataset root (ImageNet layout: DIR/train/<class>/*.JPEG or DIR/<class>/*)")
    a("--split", default="train", help="train | val")
    a("--out", default=None, help="FILE.beton to write")
    a("--subset", type=int, default=0, help="write a fixed random subset of N images (0: all)")
    a("--seed", type=int, default=0)
    enc = Encoding()   # the flags' defaults are the dataclass's
    a("--max-resolution", type=int, default=enc.max_resolution,
      help="resize so the longer side is <= this (FFCV: 256-512)")
    a("--jpeg-quality", type=int, default=enc.jpeg_quality)
    a("--write-mode", default=enc.write_mode,
      help="jpg | raw | proportion | smart (FFCV's ImageNet recipe: proportion)")
    a("--compress-probability", type=float, default=enc.compress_probability,
      help="with --write-mode proportion: share stored as JPEG")
    a("--workers", type=int, default=None, help="processes (default: all cores)")
    a("--chunksize", type=int, default=100)
    a("--force", action="store_true", help="overwrite OUT")
    a("--check", action="store_true", help="only decode every image and list the unreadable ones")
    a("--report", default=None, help="where to list unreadable images (default: OUT.report.txt)")
    a("--no-progress", action="store_true")
    return p


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}"
        n /= 1024


def write_report(path: str, bad, total: int):
    with open(path, "w") as f:
        f.write(f"# {len(bad)} of {total} images could not be decoded and were skipped\n")
        for i, p, reason in bad:
            f.write(f"{p}\t{reason}\n")


def _check_args(args):
    """One line (a UsageError) for each bad flag, before any image is read."""
    if args.split not in ("train", "val"):
        raise UsageError(f"--split {args.split}: choose train or val")
    if args.write_mode not in WRITE_MODES:
        raise UsageError(f"--write-mode {args.write_mode}: unknown (choose from {', '.join(WRITE_MODES)})")
    if not 1 <= args.jpeg_quality <= 100:
        raise UsageError(f"--jpeg-quality {args.jpeg_quality}: must be in 1..100")
    if not 0 <= args.compress_probability <= 1:
        raise UsageError(f"--compress-probability {args.compress_probability}: must be in [0, 1]")
    if args.max_resolution is not None and args.max_resolution < 8:
        raise UsageError(f"--max-resolution {args.max_resolution}: too small")
    if not args.check and not args.out:
        raise UsageError("--out FILE.beton is required (or --check to only list unreadable images)")
    if args.out and not args.check:
        if os.path.isdir(args.out):
            raise UsageError(f"--out {args.out}: is a directory")
        if os.path.exists(args.out) and not args.force:
            raise UsageError(f"--out {args.out}: exists (add --force to overwrite)")


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    _check_args(args)
    workers = args.workers or os.cpu_count() or 1
    progress = not args.no_progress
    args.dataset, found = recognise(args.dataset, args.data)
    print(f"data: {found}", flush=True)
    src = open_source(args.dataset, args.data, train=args.split == "train", subset=args.subset, seed=args.seed)

    t0 = time.perf_counter()
    bad = check(src, workers, progress)
    report = args.report or (f"{args.out}.report.txt" if args.out else "prepare_check.txt")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if bad or args.check:
        write_report(report, bad, len(src))
    print(f"checked {len(src)} images: {len(bad)} unreadable" + (f", listed in {report}" if bad or args.check else ""),
          flush=True)
    if args.check:
        return 0
    bad_ix = {i for i, _, _ in bad}
    keep = np.array([i for i in range(len(src)) if i not in bad_ix], dtype=np.int64)
    if len(keep) == 0:
        raise UsageError(f"--data {args.data}: no readable image to write")

    tmp = f"{args.out}.tmp-{os.getpid()}"
    t1 = time.perf_counter()
    try:
        enc = Encoding(write_mode=args.write_mode, max_resolution=args.max_resolution,
                       jpeg_quality=args.jpeg_quality, compress_probability=args.compress_probability)
        write_beton(Samples(src, keep), tmp, enc, workers=workers, chunksize=args.chunksize, progress=progress)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    dt = time.perf_counter() - t1
    base = _base(src)
    meta = {"dataset": args.dataset, "data": os.path.abspath(args.data) if args.data else None,
            "split": args.split, "num_samples": int(len(keep)), "skipped": len(bad), "source_samples": len(base),
            "num_classes": int(src.num_classes), "classes": getattr(base, "classes", None),
            "mean": list(src.mean), "std": list(src.std), "subset": args.subset, "seed": args.seed,
            "write_mode": args.write_mode, "max_resolution": args.max_resolution,
            "jpeg_quality": args.jpeg_quality, "compress_probability": args.compress_probability}
    with open(f"{args.out}.json", "w") as f:
        json.dump(meta, f, indent=1)
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: {len(keep)} images, {_size(size)}, {len(keep) / dt:.0f} images/s "
          f"({time.perf_counter() - t0:.1f} s in all); skipped {len(bad)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
