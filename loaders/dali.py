"""The `dali` back end: NVIDIA DALI decodes and augments every view inside one pipeline, on the GPU
(device='mixed' nvJPEG decode + GPU operators) or, where there is no GPU, the same pipeline on the CPU
(device_id=None, device='cpu' operators), so CI runs the real pipeline.

Per view: random-resized crop (area and aspect as torchvision), colour jitter with probability p
(brightness and contrast around the sample's mean grey level as torchvision does; saturation and hue with
DALI's linear hsv), grayscale with probability p (hsv saturation 0: the luma), Gaussian blur with
probability p, solarize with probability p, then flip + normalize in crop_mirror_normalize to fp16 (GPU, under
bf16 or fp16 autocast) or fp32 (CPU, or an fp32 step: output_dtype), CHW. Ops with a probability use DALI conditionals, so a sample that skips an op costs nothing
(no conditional where p = 1, e.g. BYOL's first-view blur).
One difference from the torch path: jitter's four ops run in a fixed order (torchvision: random order).

Sources:
- an ImageFolder/ImageNet directory (or a file list): fn.readers.file over this rank's files of the epoch, in
  the shared epoch order (loaders/order.py: its permutation, rank split and skip, as every back end), given
  to the reader unshuffled; the pipeline is built again for each epoch (and at a resume, from the batch it
  resumes at). With pipes > 1, pipe q reads the q-th slice of every batch. The iterator is bound to the reader
  (reader_name) so epochs end. A mid-epoch resume goes on with the same samples; DALI's own random draws (crops,
  colour) then differ from the uninterrupted run's.
- with roi=True (--dali-roi), each view is decoded on its own, only its random crop window
  (fn.decoders.image_random_crop): two partial decodes instead of one whole decode + two crops.
- images held in memory (Fashion-MNIST, CIFAR): fn.external_source per sample, in the same shared epoch order.

GPU tuning (scripts/sweep_dali.py times each): hw_load (the hardware JPEG decoder's share), branchless (jitter,
grayscale, blur and solarize as identity factors for the samples that skip them, no conditionals), pipes (N
pipelines of batch/N on one GPU, each a shard of the reader with its own executor; batches concatenated),
concurrent (the views' operator chains run at once on separate CUDA streams; DALI's default: one at a time),
augment (DALI decodes and crops only; the shared device augmentation, optionally compiled, does the rest).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import DataError, UsageError
from loaders.augment import GRAY, blur_size
from loaders.batch import Batch, RawBatch
from loaders.datasets import FolderSource, Subset
from loaders.order import EpochOrder

RATIO = [3 / 4, 4 / 3]
AUGMENT_MODES = ("pipeline", "device")   # --dali-augment
SIGMA_OFF = 1e-3   # a Gaussian this narrow is a one-tap kernel: the identity (--dali-branchless's skipped blur)


def _jitter_factors(fn, a):
    """torchvision's ColorJitter factors, per sample: brightness, contrast, saturation, hue (degrees)."""
    return (fn.random.uniform(range=[1 - a.brightness, 1 + a.brightness]),
            fn.random.uniform(range=[1 - a.contrast, 1 + a.contrast]),
            fn.random.uniform(range=[1 - a.saturation, 1 + a.saturation]),
            fn.random.uniform(range=[-a.hue * 360, a.hue * 360]))


def _brightness_contrast(fn, types, v, b, c, cpu):
    """Brightness (clamped to 255), then contrast blended with the sample's mean grey level as torchvision does.
    -> float in [0, 255]. Whole-image operators: brightness_contrast, the per-channel means (one read), and the
    blend's multiply, add and clamp (DALI runs each arithmetic node as its own operator; the uint8 image is
    promoted to float by the multiply: no cast, no grey image); the grey level is the means weighted by a 1x3
    coord_transform, broadcast in the add."""
    from nvidia.dali import math as dmath
    v = fn.brightness_contrast(v, brightness=b)
    means = fn.reductions.mean(v, axes=[0, 1], keep_dims=True, dtype=types.FLOAT)   # [1, 1, 3]
    mean = fn.coord_transform(means, M=list(GRAY))                                 # [1, 1, 1]
    c = c if cpu else c.gpu()
    return dmath.clamp(v * c + mean * (1.0 - c), 0.0, 255.0)


def _jitter(fn, types, v, a, cpu):
    """Colour jitter on every sample it is given (fixed op order); hsv takes the float blend and writes uint8."""
    b, c, s, h = _jitter_factors(fn, a)
    return fn.hsv(_brightness_contrast(fn, types, v, b, c, cpu), hue=h, saturation=s, dtype=types.UINT8)


def _coin(fn, types, p):
    return fn.cast(fn.random.coin_flip(probability=p), dtype=types.BOOL)


def _maybe(fn, types, p, op, v):
    """op(v) on a fraction p of the samples: a DALI conditional (split/merge), none where p >= 1 (every sample,
    e.g. BYOL's first-view blur) or p <= 0."""
    if p >= 1:
        return op(v)
    if p > 0:
        if _coin(fn, types, p):
            v = op(v)
    return v


def _colour_branchless(fn, types, v, a, cpu):
    """Jitter (p), then grayscale (p), with no conditionals: a sample that skips an op gets its identity
    factors (brightness 1, contrast 1, hue 0, saturation 1), and grayscale is hsv's saturation 0, folded into
    jitter's hsv. Fewer GPU operators than the branches (no split/merge, one hsv that takes the float blend
    and writes uint8); every sample pays the jitter's arithmetic."""
    def pick(coin, value):   # per-sample scalars on the CPU: value where coin is 1, 1 (identity) where 0
        return 1.0 + coin * (value - 1.0)
    sat = 1.0
    if a.jitter > 0:
        j = fn.cast(fn.random.coin_flip(probability=a.jitter), dtype=types.FLOAT)
        b, c, s, h = _jitter_factors(fn, a)
        b, c, sat, hue = pick(j, b), pick(j, c), pick(j, s), j * h
        v = _brightness_contrast(fn, types, v, b, c, cpu)   # float: hsv below writes uint8
    else:
        hue = 0.0
    if a.gray > 0:
        sat = sat * (1.0 - fn.cast(fn.random.coin_flip(probability=a.gray), dtype=types.FLOAT))
    if a.jitter > 0 or a.gray > 0:
        v = fn.hsv(v, hue=hue, saturation=sat, dtype=types.UINT8)
    return v


@dataclass(frozen=True)
class ViewSpec:
    """What every view of one pipeline shares: the output size, the normalisation, the output dtype and layout
    (DALI types), CPU or GPU operators, the branchless colour ops, the decoder's extra arguments, and crop_only
    (the random-resized crop alone, as uint8 CHW: the rest is the shared device augmentation's)."""
    res: int
    mean: tuple
    std: tuple
    out_dtype: object
    layout: str
    cpu: bool
    branchless: bool = False
    dec: tuple = ()   # the decoder's extra arguments as (name, value) pairs: a frozen spec holds no dict
    crop_only: bool = False


def view_ops(fn, types, images, a, spec: ViewSpec, jpegs=None):
    """One view of the recipe `a` (loaders.augment.ViewAug) from decoded uint8 HWC images, or, given `jpegs`,
    with ROI decoding (each view decodes only its random crop window), as `spec` says."""
    from nvidia.dali import math as dmath
    res, cpu, branchless = spec.res, spec.cpu, spec.branchless
    dev = "cpu" if cpu else "gpu"
    if jpegs is not None:
        v = fn.decoders.image_random_crop(jpegs, device="cpu" if cpu else "mixed", output_type=types.RGB,
                                          random_area=list(a.crop_scale), random_aspect_ratio=RATIO,
                                          num_attempts=10, **dict(spec.dec))
        v = fn.resize(v, resize_x=res, resize_y=res, antialias=True)
    else:
        v = fn.random_resized_crop(images, device=dev, size=[res, res], random_area=list(a.crop_scale),
                                   random_aspect_ratio=RATIO, antialias=True)
    if spec.crop_only:
        return fn.transpose(v, perm=[2, 0, 1])
    if branchless:
        v = _colour_branchless(fn, types, v, a, cpu)
    else:
        v = _maybe(fn, types, a.jitter, lambda x: _jitter(fn, types, x, a, cpu), v)
        v = _maybe(fn, types, a.gray, lambda x: fn.hsv(x, saturation=0.0), v)
    if a.blur > 0:
        sigma = fn.random.uniform(range=list(a.sigma))
        if branchless and a.blur < 1:   # a sample that skips the blur gets sigma 1e-3: a one-tap kernel, identity
            sigma = SIGMA_OFF + fn.random.coin_flip(probability=a.blur) * (sigma - SIGMA_OFF)
        v = _maybe(fn, types, 1.0 if branchless else a.blur,
                   lambda x: fn.gaussian_blur(x, sigma=sigma, window_size=blur_size(res)), v)
    if a.solarize > 0:
        if branchless:   # threshold 256 (never reached by uint8) for a sample that skips it
            t = 128 + 128 * (1 - fn.random.coin_flip(probability=a.solarize))
            v = v ^ ((v >= (t if cpu else t.gpu())) * types.Constant(255, dtype=types.UINT8))
        else:            # min(x, 255 - x) is x below 128 and 255 - x from 128: two uint8 ops
            v = _maybe(fn, types, a.solarize, lambda x: dmath.min(x, types.Constant(255, dtype=types.UINT8) - x), v)
    mirror = fn.random.coin_flip(probability=a.flip) if a.flip > 0 else 0
    return fn.crop_mirror_normalize(v, mirror=mirror, dtype=spec.out_dtype, output_layout=spec.layout,
                                    mean=[m * 255 for m in spec.mean], std=[s * 255 for s in spec.std])


def output_dtype(device_type: str, amp: str | None) -> torch.dtype:
    """The dtype of the views DALI hands over: fp16 on a GPU whose step runs under fp16 or bf16 autocast (half
    the bytes; autocast casts them for the first conv), fp32 otherwise: an fp32 step given fp16 images fails
    at its first conv ("Input type (c10::Half) and bias type (float) should be the same")."""
    return torch.float16 if device_type == "cuda" and amp in ("fp16", "bf16") else torch.float32


def check_options(hw_load=None, pipes=1, augment="pipeline", batch_size=None):
    """The DALI flags' values: when the flags are read (flags.py) and again by the loader."""
    if augment not in AUGMENT_MODES:
        raise UsageError(f"`dali_augment` {augment}: unknown (choose from {', '.join(AUGMENT_MODES)})")
    if hw_load is not None and not 0.0 <= hw_load <= 1.0:
        raise UsageError(f"`dali_hw_load` {hw_load}: a fraction in [0, 1]")
    if pipes < 1:
        raise UsageError(f"`dali_pipes` {pipes}: must be >= 1")
    if batch_size is not None and batch_size % pipes:
        raise UsageError(f"`dali_pipes` {pipes}: must divide the batch size {batch_size}")


class DALILoader:
    def __init__(self, source, recipe, opts, device, rank=0, world=1, augment=None):
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise UsageError("`loader` dali: nvidia-dali is not installed (pip install nvidia-dali-cuda130)")
        res, batch_size, seed, workers = opts.res, opts.batch_size, opts.seed, opts.workers
        channels_last, drop_last, skip_files = opts.channels_last, opts.drop_last, opts.skip_files
        roi, hw_load, branchless = opts.dali_roi, opts.dali_hw_load, opts.dali_branchless
        pipes, concurrent = opts.dali_pipes, opts.dali_concurrent
        self.amp = opts.amp
        self.source, self.res, self.recipe, self.batch = source, res, tuple(recipe), batch_size
        self.device, self.rank, self.world, self.seed = torch.device(device), rank, world, seed
        self.workers, self.channels_last = max(1, workers), channels_last
        self.prefetch = opts.dali_prefetch
        self.drop_last, self.roi, self.hw_load, self.branchless = drop_last, roi, hw_load, branchless
        check_options(hw_load, pipes, opts.dali_augment, batch_size)
        self.pipes, self.concurrent = pipes, concurrent
        # augment (a loaders.augment.DeviceAugment): DALI decodes and crops, the shared device stage does the
        # rest (flip, colour, blur, solarize, normalize) as for the torch and ffcv back ends
        self.augment = augment
        self.cpu = self.device.type != "cuda"
        self.mean, self.std = source.mean, source.std
        base = source.src if isinstance(source, Subset) else source
        self.files, self.skipped = None, {}
        if isinstance(base, FolderSource):
            keep = source.keep if isinstance(source, Subset) else np.arange(len(base))
            files, labels = [base.files[i] for i in keep], np.asarray(base.labels)[keep]
            bad = set(_read_skip_list(skip_files)) if skip_files else set()
            self.skipped = unreadable([f for f in files if f not in bad], say=rank == 0)   # path -> why
            bad |= set(self.skipped)
            if bad:
                kept = [k for k, f in enumerate(files) if f not in bad]
                files, labels = [files[k] for k in kept], labels[kept]
            self.files = files
            self.labels = torch.as_tensor(labels, dtype=torch.long)
            self.n = len(files)
            if pipes > 1 and (batch_size % pipes or not drop_last):
                raise UsageError(f"`dali_pipes` {pipes} split each batch: `batch_size` {batch_size} must divide by "
                                 "them, and the last short batch be dropped")
        else:
            if pipes > 1:
                raise UsageError("`dali_pipes` > 1 needs a folder or file list of images (DALI's file reader)")
            self.labels = torch.as_tensor(np.asarray(source.labels), dtype=torch.long)
            self.n = len(source)
        self.order = EpochOrder(self.n, batch_size, rank=rank, world=world, seed=seed, drop_last=drop_last)
        self.steps = len(self.order)
        self.labels = self.labels.to(self.device)
        self.epoch, self.skip, self.built_for, self.it = 0, 0, None, None

    @property
    def _plan(self):
        return self.order.plan

    def set_plan(self, plan):
        """A sample plan (SePP: each anchor next to its positive) in place of the epoch's permutation."""
        if plan is not None and self.pipes > 1:
            raise ValueError(f"a sample plan with DALI runs one pipeline, not {self.pipes}")
        self.order.plan, self.it = plan, None

    # ---- pipeline
    def _build(self, epoch):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
        cpu = self.cpu
        dec = {} if cpu or self.hw_load is None else {"hw_decoder_load": self.hw_load}
        spec = ViewSpec(
            res=self.res, mean=self.mean, std=self.std,
            out_dtype=types.FLOAT16 if output_dtype(self.device.type, self.amp) == torch.float16 else types.FLOAT,
            layout="HWC" if self.channels_last else "CHW", cpu=cpu, branchless=self.branchless, dec=tuple(dec.items()),
            crop_only=self.augment is not None)
        names = [f"view{v}" for v in range(len(self.recipe))] + ["index"]

        @pipeline_def(enable_conditionals=True)
        def pipe(q):
            images, jpegs, index = self._source(fn, types, q, epoch, dec)
            views = [view_ops(fn, types, images, a, spec, jpegs=jpegs if self.roi else None) for a in self.recipe]
            # the index rides to the GPU with the views: handed over on the device, no copy in the step
            return (*views, index if cpu else index.gpu())

        self.built_for = epoch
        # per-rank, per-pipe, per-epoch (and resumed batch) augmentation seed. pipes > 1: several pipelines of
        # batch/pipes on the same device, each reading its slice of every batch, with its own executor (their
        # batches are concatenated)
        threads = max(1, self.workers // self.pipes)
        # concurrent: independent operators (the views' chains) run at once, each on its own CUDA stream;
        # DALI's default runs one GPU operator at a time
        from nvidia.dali import OperatorConcurrency, StreamPolicy
        conc = (dict(concurrency=OperatorConcurrency.FULL, stream_policy=StreamPolicy.PER_OPERATOR)
                if self.concurrent else {})
        ps = [pipe(q, **conc, batch_size=self.batch // self.pipes, num_threads=threads,
                   device_id=None if cpu else (self.device.index or 0), prefetch_queue_depth=self.prefetch,
                   seed=(self.seed * 1000003 + (self.rank * self.pipes + q) * 7919 + epoch + 104729 * self.skip)
                   % (2 ** 31))
              for q in range(self.pipes)]
        try:
            for p in ps:
                p.build()
        except RuntimeError as e:
            raise DataError(f"DALI pipeline failed to build: {_first_line(e)}")
        reader = {"reader_name": "Reader"} if self.files is not None else {}
        # files: one epoch per build (no auto_reset, which would prefetch the same list again, to be thrown away)
        self.it = DALIGenericIterator(ps, names, last_batch_policy=LastBatchPolicy.PARTIAL,
                                      auto_reset=self.files is None, **reader)

    def _source(self, fn, types, q, epoch, dec):
        """Pipeline `q`'s samples (inside the pipeline definition): (decoded images or None, encoded JPEGs or
        None, the sample index), in the epoch order: files from DALI's reader given this rank's list (pipe q: the
        q-th slice of each batch), in-memory images from an external source."""
        cpu = self.cpu
        if self.files is not None:
            # the sample's position in self.files rides as its "label"; class labels are looked up after
            sub = self.batch // self.pipes
            order = [i for b in self.order.batches(epoch, self.skip) for i in b[q * sub:(q + 1) * sub]]
            jpegs, index = fn.readers.file(files=[self.files[i] for i in order], labels=[int(i) for i in order],
                                           name="Reader", random_shuffle=False, pad_last_batch=True)
        else:
            images, index = fn.external_source(source=self._sample_fn(), num_outputs=2, batch=False,
                                               dtype=[types.UINT8, types.INT64], layout=["HWC", ""])
            return (images if cpu else images.gpu()), None, index
        images = None if self.roi else fn.decoders.image(jpegs, device="cpu" if cpu else "mixed",
                                                         output_type=types.RGB, **dec)
        return images, jpegs, index

    def _sample_fn(self):
        src, loader = self.source, self

        def sample(info):
            order = loader._rank_order(info.epoch_idx + loader.built_for)
            if info.idx_in_epoch >= len(order):
                raise StopIteration
            i = int(order[info.idx_in_epoch])
            img = src.load(i)[0].permute(1, 2, 0).numpy()
            if img.shape[2] == 1:
                img = np.repeat(img, 3, axis=2)
            return np.ascontiguousarray(img), np.array(i, dtype=np.int64)
        return sample

    def _rank_order(self, epoch):
        """This rank's samples of `epoch` from the batch it starts at (computed once per epoch: the callback asks
        for every sample)."""
        key = (epoch, self.skip, self._plan)
        if getattr(self, "_order_key", None) != key:
            self._order, self._order_key = self.order.samples(epoch, self.skip), key
        return self._order

    # ---- loader interface
    resumes_mid_epoch = True   # the pipeline is built for the epoch's batches from `skip` on

    def set_epoch(self, epoch: int, skip: int = 0):
        """The next iteration is `epoch`'s from batch `skip`: the pipeline is built for it (files: the reader's
        list is the epoch's; in memory: for a resume or a jump, else the external source goes on)."""
        if self.files is not None or skip or self.skip or (self.built_for is not None and epoch != self.epoch + 1
                                                             and epoch != self.epoch):
            self.it = None
        self.epoch, self.skip = epoch, skip
        self.order.set_epoch(epoch, skip)

    def __len__(self):
        return self.steps

    def __iter__(self):
        if self.it is None:
            self._build(self.epoch)
            self._pos = 0
        while True:
            try:
                outs = next(self.it)   # one dict of outputs per pipeline
            except StopIteration:
                steps, self._pos = self._pos, 0
                if steps != self.steps - self.skip:
                    raise RuntimeError(f"DALI gave {steps} batches this epoch, expected {self.steps - self.skip}")
                if self.files is not None:
                    self.it = None   # the next epoch's list is another
                return
            except RuntimeError as e:
                raise DataError(self.explain(e))
            self._pos += 1
            yield self._batch(outs)

    def explain(self, e) -> str:
        """A DALI decode failure in words: DALI seldom names the file, so the files are decoded once more with PIL
        to name the unreadable ones (a file that looks whole to sniff() but is not)."""
        hint = "list them with python -m loaders.prepare --check and pass the report with --skip-files"
        if self.files is None:
            return f"DALI: {_first_line(e)} ({hint})"
        from loaders.prepare import _check_one
        bad = [(f, why) for f in self.files if (why := _check_one(f))]
        named = f"; unreadable: {bad[0][0]} ({bad[0][1]})" + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
        return f"DALI: {_first_line(e)}{named if bad else ''} ({hint})"

    def _batch(self, outs):
        """The device stage: one dict of DALI outputs per pipeline -> Batch (tests/test_device_check.py runs it
        on a fake GPU)."""
        views = _stack([[o[f"view{v}"] for o in outs] for v in range(len(self.recipe))]).to(self.device)
        index = torch.cat([o["index"].view(-1) for o in outs]).to(self.device, non_blocking=True).long()
        if self.augment is not None:   # uint8 CHW crops -> the shared device stage
            return self.augment(RawBatch(views, index, self.labels[index], epoch=self.epoch))
        if self.channels_last:   # HWC from DALI: a channels_last NCHW view, no copy
            views = views.permute(0, 1, 4, 2, 3)
        if self.cpu:
            views = views.float()
        return Batch(views=views, index=index, label=self.labels[index])


def _stack(pieces):
    """pieces[v][q]: view v's outputs of pipeline q, [b_q, ...] each -> one [V, sum b_q, ...] tensor, in one copy."""
    if len(pieces[0]) == 1:
        return torch.stack([p[0] for p in pieces])
    first = pieces[0][0]
    out = torch.empty((len(pieces), sum(len(t) for t in pieces[0]), *first.shape[1:]), dtype=first.dtype,
                      device=first.device)
    for v, parts in enumerate(pieces):
        torch.cat(parts, out=out[v])
    return out


def _first_line(e) -> str:
    """The useful line of a DALI error (it nests the pipeline traceback): the file it failed on, if named."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    hits = [ln for ln in lines if ln.startswith("Failed to") or "rror" in ln and "/" in ln and "File " not in ln]
    rest = [ln for ln in lines if not ln.startswith(("Critical", "File ", "Error in"))]
    return (hits or rest or ["unknown"])[0][:400]


IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF", b"P5", b"P6",
               b"\x00\x00\x00\x0cjP")


def sniff(path: str) -> str | None:
    """Why DALI could not decode this file, from its first and last bytes (not an image, a JPEG cut short); None
    if it looks whole. DALI stops the whole pipeline at a file it cannot decode, so such files are left out."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, os.path.getsize(path) - 64))
            tail = f.read()
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    if not head.startswith(IMAGE_MAGIC):
        return f"cannot decode {path}: not an image file"
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in tail:
        return f"cannot decode {path}: a truncated JPEG (no end-of-image marker)"
    return None


def unreadable(files: list[str], say: bool) -> dict[str, str]:
    """{path: why} for the files sniff() finds unreadable, with one warning each (where `say`)."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:   # reads of a few bytes: the disk's latency, not the CPU
        found = {f: why for f, why in zip(files, pool.map(sniff, files, chunksize=256)) if why}
    for k, why in enumerate(found.values()):
        if say:
            print(f"warning: skipped an unreadable image ({k + 1} so far): {why}", file=sys.stderr, flush=True)
    return found


def _read_skip_list(path):
    try:
        with open(path) as f:
            return [ln.split("\t")[0] for ln in f if ln.strip() and not ln.startswith("#")]
    except OSError as e:
        raise UsageError(f"`skip_files` {path}: {e.strerror}")
