import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from loaders.datasets import FASHION_DIR as FASHION   # noqa: E402  (FASHION_MNIST_DIR overrides Debian's folder)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA (skipped without it)")
    config.addinivalue_line("markers", "slow: multi-process or training runs")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="no CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def have_fashion() -> bool:
    return os.path.isfile(os.path.join(FASHION, "train-images-idx3-ubyte")) or os.path.isfile(
        os.path.join(FASHION, "train-images-idx3-ubyte.gz"))


needs_fashion = pytest.mark.skipif(not have_fashion(), reason=f"no Fashion-MNIST idx files in {FASHION} (set "
                                   "FASHION_MNIST_DIR to a folder of them)")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)
