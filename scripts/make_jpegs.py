"""Write an ImageNet-like folder of synthetic JPEGs (for benchmarks where no real data can be brought):
root/c000/..., sizes drawn around ImageNet's (short side ~330-500 px), smooth content with texture so that
files are ~100 KB at quality 90 like ImageNet's.

    python scripts/make_jpegs.py /tmp/inet --n 10000 --classes 100
"""
import argparse
import multiprocessing as mp
import os

import cv2
import numpy as np


def one(args):
    root, i, classes, seed = args
    rng = np.random.default_rng([seed, i])
    h, w = int(rng.integers(300, 500)), int(rng.integers(350, 520))
    small = rng.integers(0, 256, (max(2, h // 48), max(2, w // 48), 3)).astype(np.uint8)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.normal(0, 18, (h, w, 3)).astype(np.int16)
    d = os.path.join(root, f"c{i % classes:03d}")
    os.makedirs(d, exist_ok=True)
    cv2.imwrite(os.path.join(d, f"{i:07d}.jpg"), np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("root")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    with mp.Pool(os.cpu_count()) as pool:
        pool.map(one, [(a.root, i, a.classes, a.seed) for i in range(a.n)], chunksize=64)
    sizes = [os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(a.root) for f in fs]
    print(f"{len(sizes)} JPEGs in {a.root}, mean {np.mean(sizes) / 1024:.0f} KB")
