"""What eval.bench holds the loaders against, measured on the same files and cores in the same run:

- `tvpil`: the users' baseline, lightly's SimCLRTransform as its Imagenette benchmark runs it: ImageFolder's
  PIL loader, torchvision transforms (RandomResizedCrop 0.08-1, flip, ColorJitter 0.8/0.8/0.8/0.2 with p 0.8,
  grayscale 0.2, PIL Gaussian blur sigma 0.1-2 with p 0.5, ToTensor, Normalize), two views, DataLoader workers.
- `ceiling`: libjpeg-turbo decoding the same files whole (PIL, no crop, no augmentation) in `workers` processes
  with nothing else: what the cores can decode, the limit a loader that decodes every image whole cannot pass.
"""
from __future__ import annotations

import multiprocessing as mp
import random
import time

import torch

from loaders.datasets import Subset


def files_of(source) -> list[str] | None:
    """The image files behind a source (a folder, a file list, a subset of one), None for in-memory sets."""
    base = source.src if isinstance(source, Subset) else source
    files = getattr(base, "files", None)
    if files is None:
        return None
    return [files[int(k)] for k in source.keep] if isinstance(source, Subset) else list(files)


class PILBlur:
    """lightly.transforms.GaussianBlur: PIL's GaussianBlur with a radius drawn from `sigmas`, with probability p."""

    def __init__(self, p=0.5, sigmas=(0.1, 2.0)):
        self.p, self.sigmas = p, sigmas

    def __call__(self, img):
        from PIL import ImageFilter
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigmas)))


def simclr_transform(res: int, mean, std):
    """lightly's SimCLRTransform with its defaults (one view)."""
    import torchvision.transforms as T
    return T.Compose([T.RandomResizedCrop(res, scale=(0.08, 1.0)), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
                      PILBlur(), T.ToTensor(), T.Normalize(mean, std)])


class TVPIL:
    """The users' baseline loader: ImageFolder-style PIL reads, lightly's SimCLRTransform twice, a DataLoader."""

    def __init__(self, source, res, batch, workers, device):
        from PIL import Image
        from torch.utils.data import DataLoader, Dataset
        tf, files = simclr_transform(res, source.mean, source.std), files_of(source)

        class Views(Dataset):
            def __len__(self):
                return len(source)

            def __getitem__(self, i):
                if files is not None:   # ImageFolder's loader
                    with open(files[i], "rb") as f:
                        pil = Image.open(f).convert("RGB")
                    y = int(source.labels[i])
                else:
                    img, y = source.load(i)
                    a = img.permute(1, 2, 0).numpy()
                    pil = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).convert("RGB")
                return torch.stack([tf(pil), tf(pil)]), i, y

        self.dl = DataLoader(Views(), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                             pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        self.device = device

    def __iter__(self):
        from loaders.batch import Batch
        for v, i, y in self.dl:
            yield Batch(v.to(self.device, non_blocking=True).transpose(0, 1), i.to(self.device), y.to(self.device))


def _decode_for(args) -> int:
    """Decode files whole, round and round, for `seconds`: -> images decoded."""
    from PIL import Image
    files, seconds = args
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for f in files:
            with Image.open(f) as im:
                im.convert("RGB")
            n += 1
            if n % 16 == 0 and time.perf_counter() - t0 >= seconds:
                break
    return n


def decode_ceiling(source, workers: int, seconds: float = 10.0, repeats: int = 3) -> dict | None:
    """Images/s of whole-file decodes by `workers` processes (median and range of `repeats` windows); None for
    an in-memory source (nothing to decode)."""
    files = files_of(source)
    if not files:
        return None
    workers = max(1, workers)
    shards = [files[k::workers] for k in range(workers)]
    rates = []
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(_decode_for, [(s[:8], 0.5) for s in shards])   # page cache and imports: not timed
        for _ in range(repeats):
            t0 = time.perf_counter()
            n = sum(pool.map(_decode_for, [(s, seconds) for s in shards]))
            rates.append(n / (time.perf_counter() - t0))
    rates.sort()
    return {"img_s": rates[len(rates) // 2], "range": [rates[0], rates[-1]], "workers": workers, "decoder": "PIL"}
