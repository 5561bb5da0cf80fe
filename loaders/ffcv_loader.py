"""The `ffcv` back end: a .beton (python -m loaders.prepare) -> FFCV workers that decode each JPEG ONCE and
cut V random-resized crops of it (MultiCropDecoder, compiled with numba like FFCV's own decoders) ->
ToDevice(non_blocking) -> the shared device augmentation -> Batch.

Stock FFCV gives one output per pipeline: two views of one field mean two decodes (PipelineSpec), and
ffcv 1.0.2 has no custom_field_mapper. MultiCropDecoder is an FFCV Operation whose output is
uint8 [V, res, res, 3] per sample: one decode into a scratch buffer, then V crop+resizes (FFCV's resize).

Crops come from loaders/crops.py's hash of (seed, epoch, sample, view), the stream every back end shares:
the same crops for a sample and epoch whatever the worker count or thread (crop_box).
The epoch reaches the compiled code through a one-element array read by address (no recompilation).

Order: one process -> FFCV's RANDOM, or QUASI_RANDOM with --no-os-cache (the case it is made for: it
reads a few pages at a time, so a batch draws from few pages; with a .beton written in class order that
means few classes per batch); distributed -> our own
TraversalOrder, the global per-epoch permutation split by rank (loaders/order.py) like every back end:
FFCV's RANDOM+distributed pads with duplicates (DistributedSampler, drop_last=False) and its QUASI_RANDOM
does not support distributed. The SePP sampler's plan plugs into the same order.

Memory: with os_cache=False each process keeps its own page cache, so host RAM grows with the number of
GPUs (8 ranks = 8 copies of the hot set); os_cache=True (default) shares the OS page cache.
"""
from __future__ import annotations

import os
import threading
import weakref
from queue import Empty

import numpy as np
import torch
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from engine.errors import DataError, UsageError
from loaders.augment import DeviceAugment
from loaders.batch import RawBatch
from loaders.crops import crop_box, crop_key, reduction, scaled_box
from loaders.order import EpochOrder

@intrinsic
def _int64_ptr(typingctx, addr):
    """An integer address -> int64* (to read a value Python changes between epochs)."""
    sig = types.CPointer(types.int64)(types.intp)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.intp_t.as_pointer())
    return sig, codegen


@njit
def read_int64(addr):
    return carray(_int64_ptr(addr), (1,))[0]


def _decoder_class():
    """Defined lazily so that importing this module does not need ffcv."""
    from dataclasses import replace

    from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder
    from ffcv.libffcv import imdecode, resize_crop
    from ffcv.pipeline.allocation_query import AllocationQuery
    from ffcv.pipeline.compiler import Compiler

    class MultiCropDecoder(SimpleRGBImageDecoder):  # FFCV accepts a decoder of the field's decoder class
        """RGBImageField -> uint8 [V, res, res, 3] per sample: decode once, V random-resized crops."""

        def __init__(self, res: int, scales, seed: int):
            super().__init__()
            self.res, self.scales, self.seed = int(res), np.asarray(scales, dtype=np.float64), int(seed)
            self.epoch = np.zeros(1, dtype=np.int64)   # written by set_epoch, read by the compiled code

        def declare_state_and_memory(self, previous_state):
            self.max_width = np.uint64(self.metadata["width"].max())
            self.max_height = np.uint64(self.metadata["height"].max())
            shape = (len(self.scales), self.res, self.res, 3)
            u8 = np.dtype("<u1")
            return (replace(previous_state, jit_mode=True, shape=shape, dtype=u8),
                    (AllocationQuery(shape, u8),
                     AllocationQuery((self.max_height * self.max_width * np.uint64(3),), u8)))

        def generate_code(self):
            jpg = IMAGE_MODES["jpg"]
            mem_read = self.memory_read
            my_range = Compiler.get_iterator()
            imdecode_c = Compiler.compile(imdecode)
            resize_crop_c = Compiler.compile(resize_crop)
            scales, seed, V, res = self.scales, self.seed, len(self.scales), self.res
            epoch_addr = self.epoch.ctypes.data

            def decode(batch_indices, my_storage, metadata, storage_state):
                destination, temp_storage = my_storage
                epoch = read_int64(epoch_addr)
                for dst_ix in my_range(len(batch_indices)):
                    source_ix = batch_indices[dst_ix]
                    field = metadata[source_ix]
                    image_data = mem_read(field["data_ptr"], storage_state)
                    height = np.uint32(field["height"])
                    width = np.uint32(field["width"])
                    boxes = np.empty((V, 4), np.int64)
                    smallest = 1 << 30
                    for v in range(V):
                        i, j, h, w = crop_box(crop_key(seed, epoch, source_ix, v), int(height), int(width),
                                              scales[v, 0], scales[v, 1])
                        boxes[v, 0], boxes[v, 1], boxes[v, 2], boxes[v, 3] = i, j, h, w
                        smallest = min(smallest, h, w)
                    s = 1
                    if field["mode"] == jpg:   # libjpeg's DCT-scaled decode: 1/s of the work where crops allow
                        s = reduction(smallest / res)
                        buf = temp_storage[dst_ix]
                        imdecode_c(image_data, buf, height, width, height, width, 0, 0, 1, s, False, False)
                        hs, ws = (int(height) + s - 1) // s, (int(width) + s - 1) // s   # TJSCALED
                        img = buf.reshape(-1)[:3 * hs * ws].reshape(hs, ws, 3)
                    else:
                        hs, ws = int(height), int(width)
                        img = image_data.reshape(height, width, 3)
                    for v in range(V):
                        i, j, h, w = boxes[v, 0], boxes[v, 1], boxes[v, 2], boxes[v, 3]
                        if s > 1:
                            i, j, h, w = scaled_box(i, j, h, w, hs / height, ws / width, hs, ws)
                        resize_crop_c(img, i, i + h, j, j + w, destination[dst_ix, v])
                return destination[:len(batch_indices)]

            decode.is_parallel = True
            return decode

    return MultiCropDecoder


def _rank_order_class():
    from ffcv.traversal_order.base import TraversalOrder

    class RankOrder(TraversalOrder):
        """FFCV's view of our EpochOrder: this rank's samples of an epoch, from the resumed batch on."""

        def __init__(self, order: EpochOrder, rows=None):
            self.order, self.rows = order, rows   # rows: the .beton rows of the order's positions (None: all)

        def __call__(self, loader):  # ffcv 1.0.2 calls the order it was given with the loader
            self.loader, self.indices, self.seed = loader, loader.indices, loader.seed
            self.distributed, self.sampler = loader.distributed, None
            return self

        def sample_order(self, epoch):
            s = self.order.samples(epoch)
            return (s if self.rows is None else self.rows[s]).astype(np.uint64)

    return RankOrder


# FFCV runs its pipeline in a thread; an exception there is printed and the consumer waits forever.
# We record such exceptions and turn a dead pipeline thread into one clear error instead of a hang.
_THREAD_ERRORS: "weakref.WeakKeyDictionary[threading.Thread, BaseException]" = weakref.WeakKeyDictionary()
_default_hook = threading.excepthook


def _record_thread_error(args):
    if type(args.thread).__name__ == "EpochIterator":
        _THREAD_ERRORS[args.thread] = args.exc_value
    else:
        _default_hook(args)


threading.excepthook = _record_thread_error


def epoch_batches(it, poll: float = 1.0):
    """Iterate an FFCV EpochIterator; raise DataError if its thread dies instead of waiting forever."""
    try:
        while True:
            try:
                item = it.output_queue.get(timeout=poll)
            except Empty:
                if not it.is_alive():
                    e = _THREAD_ERRORS.pop(it, None)
                    why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" if e else "no error recorded"
                    raise DataError(f"the FFCV pipeline stopped ({why})")
                continue
            if item is None:
                return
            slot, result = item
            if it.cuda_streams[slot] is not None:
                it.current_stream.wait_stream(it.cuda_streams[slot])
            yield result
    finally:   # also when the loop is left early (a stop signal's sys.exit, an error, a break)
        it.terminate_event.set()
        # FFCV's thread reads the event only when its queue is full (a few batches on, then 0.5 s): wait for it, so
        # that its numba code neither runs on the memory that close() frees nor at interpreter exit, where a
        # running native thread aborts the process (std::terminate, SIGABRT instead of the stop's exit code 3)
        it.join(timeout=120)
        it.close()


def check_beton(path: str):
    """A .beton that opens: its header, fields and every sample's data inside the file; else UsageError."""
    if not path:
        raise UsageError("`loader` ffcv needs `beton` FILE (make one with: python -m loaders.prepare --out FILE)")
    if not os.path.isfile(path):
        raise UsageError(f"`beton` {path}: no such file (make it with: python -m loaders.prepare --out {path})")
    from ffcv.reader import Reader
    from ffcv.types import CURRENT_VERSION, HeaderType
    size = os.path.getsize(path)
    header = np.fromfile(path, dtype=HeaderType, count=1)
    damaged = UsageError(f"`beton` {path}: truncated or damaged FFCV .beton ({size} bytes); remake it with "
                         "loaders.prepare")
    if len(header) == 1 and header[0]["version"] == CURRENT_VERSION and header[0]["alloc_table_ptr"] > size:
        raise damaged
    try:
        r = Reader(path)
        ok = len(r.metadata) == r.num_samples and len(r.alloc_table) > 0
        ok = ok and int((r.alloc_table["ptr"] + r.alloc_table["size"]).max()) <= size
    except Exception as e:
        raise UsageError(f"`beton` {path}: not a readable FFCV .beton ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'bad header'}); remake it with loaders.prepare")
    if not ok:
        raise damaged
    missing = {"image", "label", "index"} - set(r.field_names)
    if missing:
        raise UsageError(f"`beton` {path}: has fields {r.field_names}, needs image, label and index "
                         "(write it with python -m loaders.prepare)")
    return r


class FFCVLoader:
    """rows: the .beton rows to read (a training set that holds some out to score); Batch.index is then a
    sample's position among them, as every loader's index is its position in the training source."""

    def __init__(self, recipe, opts, device, augment: DeviceAugment, rank=0, world=1, *, rows=None):
        from ffcv.fields.basics import IntDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import Squeeze, ToDevice, ToTensor
        path, batch_size, seed, drop_last = opts.beton, opts.batch_size, opts.seed, opts.drop_last
        order, res_at, os_cache = opts.ffcv_order, opts.res_at, opts.os_cache
        res = res_at(0) if res_at else opts.res
        reader = check_beton(path)
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.n = int(reader.num_samples) if rows is None else len(self.rows)
        self.device, self.augment, self.res_at = torch.device(device), augment, res_at
        self.position = None   # .beton row -> position among `rows`, on the device
        if self.rows is not None:
            self.position = torch.full((int(reader.num_samples),), -1, dtype=torch.int64)
            self.position[torch.from_numpy(self.rows)] = torch.arange(self.n)
            self.position = self.position.to(self.device)
        self.decoder = _decoder_class()(res, [a.crop_scale for a in recipe], seed)
        # auto: the shared epoch order (loaders/order.py: a resume goes on at its batch, SePP's plan can replace
        # it), or FFCV's QUASI_RANDOM on one process with os_cache off (what it is for: it reads a few pages at a
        # time, so batches come from few pages)
        self.order_name = order if order != "auto" else ("ours" if world > 1 or os_cache else "quasi_random")
        if world > 1 and self.order_name != "ours":
            raise UsageError(f"`ffcv_order` {order}: under torchrun only 'ours' (the rank split of one global "
                             "permutation) gives every sample once per epoch")
        if self.order_name == "ours":
            self.order = EpochOrder(self.n, batch_size, rank=rank, world=world, seed=seed, drop_last=drop_last)
            ffcv_order = _rank_order_class()(self.order, self.rows)
        elif self.order_name in ("random", "quasi_random"):
            self.order = None   # FFCV's own order: it cannot skip to a batch, nor follow a plan
            ffcv_order = OrderOption.RANDOM if self.order_name == "random" else OrderOption.QUASI_RANDOM
        else:
            raise UsageError(f"`ffcv_order` {order}: choose auto, quasi_random, random or ours")
        nb = self.device.type == "cuda"
        dev = [ToDevice(self.device, non_blocking=nb)]
        pipelines = {"image": [self.decoder, ToTensor(), *dev],
                     "label": [IntDecoder(), ToTensor(), Squeeze(1), *dev],
                     "index": [IntDecoder(), ToTensor(), Squeeze(1), *dev]}
        import numba
        workers = min(max(1, opts.workers), numba.config.NUMBA_NUM_THREADS)  # numba refuses more threads than cores
        self.loader = Loader(path, batch_size=batch_size, num_workers=workers, os_cache=os_cache,
                             order=ffcv_order, distributed=False, seed=seed, drop_last=drop_last,
                             pipelines=pipelines, batches_ahead=opts.batches_ahead, indices=self.rows)
        self.steps = len(self.order) if self.order is not None else len(self.loader)
        self.epoch = 0

    def set_plan(self, plan):
        if self.order is None:
            raise ValueError(f"FFCV's own order ({self.order_name}) cannot follow a sample plan; ours (the rank "
                             "split of one global permutation) can")
        self.order.plan = plan

    @property
    def resumes_mid_epoch(self) -> bool:
        return self.order is not None   # our order; FFCV's own orders cannot skip

    def set_epoch(self, epoch: int, skip: int = 0):
        """The next iteration is `epoch`'s, from its batch `skip` on (a mid-epoch resume: our order only)."""
        if self.order is not None:
            self.order.set_epoch(epoch, skip)
        self.epoch = epoch
        self.decoder.epoch[0] = epoch
        self.loader.next_epoch = epoch
        if self.res_at is not None:
            res = int(self.res_at(epoch))
            if res != self.decoder.res:  # progressive resolution: a new output shape needs new code
                self.decoder.res = res
                self.loader.generate_code()

    def __len__(self):
        return self.steps

    def __iter__(self):
        self.decoder.epoch[0] = self.epoch
        self.loader.next_epoch = self.epoch
        for images, label, index in epoch_batches(iter(self.loader)):
            if self.position is not None:
                index = self.position[index]
            yield device_batch(images, label, index, self.augment, self.epoch)


def device_batch(images, label, index, augment, epoch: int = 0):
    """The device stage: FFCV's outputs (uint8 [B, V, H, W, 3] crops, labels, indices, on the device after
    ToDevice) of `epoch` -> Batch."""
    views = images.permute(1, 0, 4, 2, 3)   # [B, V, H, W, 3] -> [V, B, 3, H, W]
    if images.device.type == "cpu":   # FFCV reuses its buffers a few batches later: copies of what outlives the step
        label, index = label.clone(), index.clone()
    return augment(RawBatch(views, index, label, epoch=epoch))
