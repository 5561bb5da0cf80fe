"""Loader back ends keep the Batch contract; crops are regions of the source; epochs cover every index."""
import numpy as np
import pytest
import torch
from PIL import Image

from loaders import LoaderOptions, build_loader
from loaders.augment import RECIPES
from loaders.crops import view_box
from loaders.datasets import open_source
from loaders.order import EpochOrder, epoch_permutation, rank_batches
from loaders.torch_loader import MultiCrop

from tests.conftest import FASHION, have_fashion


@pytest.fixture(scope="module")
def fashion():
    if not have_fashion():   # a GPU host has no Debian package: FASHION_MNIST_DIR names a copy of the idx files
        pytest.skip(f"no Fashion-MNIST idx files in {FASHION} (set FASHION_MNIST_DIR)")
    return open_source("fashion-mnist", FASHION, True, subset=300, seed=0)


def test_fashion_mnist_reads_debian_idx_files():
    train, test = open_source("fashion-mnist", FASHION, True), open_source("fashion-mnist", FASHION, False)
    assert len(train) == 60000 and len(test) == 10000 and train.num_classes == 10
    assert np.bincount(train.labels).tolist() == [6000] * 10
    img, _ = train.load(0)
    assert img.shape == (1, 28, 28) and img.dtype == torch.uint8 and img.float().std() > 10


def test_views_are_crops_of_source_pil_reference(fashion):
    """Each view equals PIL's crop + bilinear resize of the region the (seed, epoch, sample, view) stream drew."""
    ds = MultiCrop(fashion, 24, [(0.2, 1.0), (0.2, 1.0)], seed=3)
    for i in range(20):
        views, idx, label, bad = ds[(i, 5)]
        src, y = fashion.load(i)
        assert idx == i and label == y
        for k, v in enumerate(views):
            t, l, h, w = view_box(3, 5, i, k, 28, 28, (0.2, 1.0))
            ref = Image.fromarray(src[0].numpy()).resize((24, 24), Image.BILINEAR, box=(l, t, l + w, t + h))
            ref = torch.from_numpy(np.array(ref)).float()
            corr = np.corrcoef(v[0].float().flatten(), ref.flatten())[0, 1]
            assert corr > 0.97, (i, corr)
        assert not torch.equal(views[0], views[1])


def test_crops_depend_on_epoch_and_view_not_on_worker():
    from loaders.crops import crop_boxes
    a = [view_box(0, 1, 7, 0, 100, 80, (0.08, 1)) for _ in range(2)]
    b, c = view_box(0, 2, 7, 0, 100, 80, (0.08, 1)), view_box(0, 1, 7, 1, 100, 80, (0.08, 1))
    assert a[0] == a[1] and a[0] != b and a[0] != c
    whole = crop_boxes(0, 1, np.arange(20), 0, 100, 80, (0.08, 1))   # the device loader's epoch table
    assert [tuple(r) for r in whole] == [view_box(0, 1, i, 0, 100, 80, (0.08, 1)) for i in range(20)]


@pytest.mark.parametrize("n,batch,world,drop", [(100, 8, 2, True), (100, 8, 2, False), (37, 5, 3, False)])
def test_epoch_order_splits_ranks_disjointly(n, batch, world, drop):
    order = epoch_permutation(n, 0, 4)
    per_rank = [np.concatenate(rank_batches(order, batch, r, world, drop)) for r in range(world)]
    seen = np.concatenate(per_rank)
    assert len(np.unique(seen)) == len(seen)            # no duplicates across ranks
    if not drop:
        assert sorted(seen.tolist()) == list(range(n))  # every index once
    else:
        assert len(seen) == (n // (batch * world)) * batch * world


def test_epoch_order_is_the_permutation_or_the_plan_split_by_rank_from_the_resumed_batch():
    from loaders.order import EpochOrder
    orders = [EpochOrder(50, 4, rank=r, world=2, seed=3, drop_last=True) for r in range(2)]
    for o in orders:
        o.set_epoch(2, skip=1)
    for r, o in enumerate(orders):
        ref = rank_batches(epoch_permutation(50, 3, 2), 4, r, 2, True)
        assert len(o) == 6 and [b.tolist() for b in o.batches()] == [b.tolist() for b in ref[1:]]
        assert o.samples(skip=0).tolist() == np.concatenate(ref).tolist()
    plan = lambda epoch: np.arange(50)[::-1] + 0 * epoch   # noqa: E731
    orders[1].plan = plan
    assert orders[1].batches(epoch=5, skip=0)[0].tolist() == [45, 44, 43, 42]   # rank 1: the 2nd slice of 8


@pytest.mark.parametrize("name", ["torch", "device", "synthetic"])
def test_every_loader_declares_the_loader_protocol_and_follows_a_plan(fashion, name):
    """train.py, SePP and eval.bench see a back end only through loaders/batch.py's Loader: its order, whether
    it resumes mid-epoch, its device stage, set_epoch and set_plan."""
    from loaders.batch import Loader
    ld = build_loader(LoaderOptions(name, 28, 32, workers=0), fashion, RECIPES["simclr"], "cpu")
    assert isinstance(ld, Loader) and ld.resumes_mid_epoch and ld.augment is not None
    ld.set_epoch(3)   # the shared epoch order (loaders/order.py): its permutation, split and skip
    assert [b.index.tolist() for b in ld] == [x.tolist() for x in EpochOrder(300, 32, seed=0).batches(epoch=3)]
    ld.set_plan(lambda epoch: np.arange(300)[::-1])
    ld.set_epoch(1, skip=2)
    b = next(iter(ld))
    assert b.index.tolist() == list(range(300 - 64 - 1, 300 - 96 - 1, -1))   # batch 2 of the plan's order
    if name != "synthetic":   # synthetic images and labels are random: only their indices are the samples'
        assert torch.equal(b.label, torch.as_tensor(fashion.labels[b.index.numpy()]))


@pytest.mark.parametrize("name", ["torch", "device", "synthetic"])
def test_loader_yields_the_batch_contract(fashion, name):
    ld = build_loader(LoaderOptions(name, 28, 32, workers=0), fashion, RECIPES["simclr"], "cpu")
    ld.set_epoch(0)
    b = next(iter(ld))
    assert b.views.shape == (2, 32, 3, 28, 28) and b.views.dtype == torch.float32
    assert b.index.dtype == torch.int64 and b.label.dtype == torch.int64
    if name in ("torch", "device"):
        assert torch.equal(b.label, torch.as_tensor(fashion.labels[b.index.numpy()]))
        assert len(ld) == 300 // 32


def test_val_split_is_carved_from_the_training_set_and_used_by_the_evaluations():
    """--val-split N: N training samples held out, the same for every --seed; training (and its --subset) uses
    the rest; a run's evaluations then score on the held-out samples, never on the test split."""
    from eval.features import eval_sources
    from loaders.datasets import fingerprint
    rest, val = open_source("fashion-mnist", FASHION, True, val_split=5000), open_source("fashion-mnist", FASHION,
                                                                                        False, val_split=5000)
    assert len(rest) == 55000 and len(val) == 5000 and not set(rest.keep) & set(val.keep)
    again = open_source("fashion-mnist", FASHION, False, seed=3, val_split=5000)
    assert np.array_equal(val.keep, again.keep)
    sub = open_source("fashion-mnist", FASHION, True, subset=1000, seed=1, val_split=5000)
    assert len(sub) == 1000 and set(sub.keep) <= set(rest.keep)          # indices of the underlying set
    img, y = sub.load(7)
    full = open_source("fashion-mnist", FASHION, True)
    assert torch.equal(img, full.load(int(sub.keep[7]))[0]) and y == full.labels[sub.keep[7]]
    assert fingerprint(sub) != fingerprint(open_source("fashion-mnist", FASHION, True, subset=1000, seed=1))
    tr, te, _ = eval_sources({"dataset": "fashion-mnist", "data": FASHION, "val_split": 5000})
    assert np.array_equal(te.keep, val.keep) and len(tr) == 55000
    assert len(eval_sources({"dataset": "fashion-mnist", "data": FASHION})[1]) == 10000
