import csv
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A small, fast configuration: resnet10 with a stride-2 stem at 28 px, tiny heads.
TINY = ["--arch", "resnet10", "--stem-stride", "2", "--proj-hidden", "64", "--proj-dim", "32",
        "--pred-hidden", "32", "--queue-size", "128", "--warmup-epochs", "0", "--optimizer", "sgd",
        "--knn-every", "-1", "--workers", "1", "--no-progress"]


def run(args, torchrun=0, timeout=600, env=None):
    cmd = [sys.executable]
    if torchrun:
        port = str(29500 + (os.getpid() % 400))
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={torchrun}", f"--master_port={port}"]
    e = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1" if torchrun else "2", **(env or {}))
    return subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=e)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def smooth_image(rng, h, w):
    """A natural-looking RGB uint8 image (smooth gradients + blobs): JPEG-friendly, every region distinct."""
    import numpy as np
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(a * x / 17 + b * y / 23 + p * 6) + 40 * np.cos((x * b - y * a) / 41)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, max(6, min(h, w) / 3))
        img += (((y - cy) ** 2 + (x - cx) ** 2) < r * r)[..., None] * rng.uniform(-60, 60, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root, per_class=6, classes=2, seed=0, bad=True):
    """root/<class>/*.jpg of varied sizes; with bad=True also a corrupt and a truncated JPEG.
    Returns (good paths in ImageFolder order, bad paths)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    good, broken = [], []
    for c in range(classes):
        d = os.path.join(root, f"class{c}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(40, 120)), int(rng.integers(40, 120))
            p = os.path.join(d, f"img{i:03d}.jpg")
            Image.fromarray(smooth_image(rng, h, w)).save(p, quality=95)
            good.append(p)
    if bad:
        with open(good[0], "rb") as f:
            data = f.read()
        corrupt = os.path.join(root, "class0", "zz_corrupt.jpg")
        with open(corrupt, "wb") as f:
            f.write(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 2000, dtype=np.uint8)))
        trunc = os.path.join(root, "class1", "zz_truncated.jpg")
        with open(trunc, "wb") as f:
            f.write(data[:len(data) // 2])
        broken = [corrupt, trunc]
    return sorted(good, key=lambda p: (os.path.dirname(p), p)), broken
