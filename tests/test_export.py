"""Weights out and in: exports that torchvision, timm and detectron2 load as they are, foreign weights recognised
by their shapes, and a picture of the embedding."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from models.methods import build_model_from_config
from engine.errors import UsageError
from eval import export
from mining.encoders import load_encoder
from tests.conftest import needs_fashion
from tests.helpers import run_here


def checkpoint(tmp_path, method="byol", arch="resnet18", small_stem=False, stem_stride=1, width=64, name="last.pt"):
    """A train.py-shaped checkpoint whose BN statistics and momentum network are not at their initial values
    (a BN buffer or a network that does not travel then shows in the features)."""
    cfg = {"method": method, "arch": arch, "small_stem": small_stem, "stem_stride": stem_stride, "width": width,
           "proj_hidden": 32, "proj_dim": 16, "pred_hidden": 16, "res": 32, "dataset": "fashion-mnist", "data": None,
           "seed": 0}
    torch.manual_seed(0)
    model = build_model_from_config(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
        if model.momentum_encoder:
            for p in model.target.parameters():
                p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / name
    torch.save({"config": cfg, "model": model.state_dict()}, path)
    return path, model


def features(net, x):
    with torch.no_grad():
        return net.eval()(x)


X = torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize("network", ["online", "momentum"])
def test_torchvision_loads_the_export_strictly_and_gives_our_features(tmp_path, network):
    ck, model = checkpoint(tmp_path)
    out = tmp_path / "tv.pth"
    export.main(["--checkpoint", str(ck), "--network", network, "--format", "torchvision", "--out", str(out)])
    tv = torchvision.models.resnet18()
    tv.load_state_dict(torch.load(out), strict=True)
    tv.fc = nn.Identity()
    ours = model.backbone if network == "online" else model.target[0]
    torch.testing.assert_close(features(tv, X), features(ours, X), rtol=1e-5, atol=1e-5)
    if network == "momentum":
        assert not torch.allclose(features(model.backbone, X), features(tv, X))


def test_timm_loads_the_export_strictly_and_gives_our_features(tmp_path):
    timm = pytest.importorskip("timm")
    ck, model = checkpoint(tmp_path, method="simclr", arch="resnet50")
    out = tmp_path / "timm.pth"
    export.main(["--checkpoint", str(ck), "--format", "timm", "--out", str(out)])
    net = timm.create_model("resnet50", pretrained=False, num_classes=0)
    net.load_state_dict(torch.load(out), strict=True)
    torch.testing.assert_close(features(net, X), features(model.backbone, X), rtol=1e-4, atol=1e-4)


def test_a_small_stem_network_loads_as_the_printed_note_says(tmp_path, capsys):
    ck, model = checkpoint(tmp_path, method="moco", arch="resnet18", small_stem=True, stem_stride=2)
    out = tmp_path / "tv.pth"
    export.main(["--checkpoint", str(ck), "--format", "torchvision", "--out", str(out)])
    said = capsys.readouterr().out
    assert ("note: small stem: before loading, set model.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False) and "
            "model.maxpool = nn.Identity()") in said
    tv = torchvision.models.resnet18()
    tv.conv1, tv.maxpool = nn.Conv2d(3, 64, 3, 2, 1, bias=False), nn.Identity()   # as the note says
    tv.load_state_dict(torch.load(out), strict=True)
    tv.fc = nn.Identity()
    x = torch.randn(2, 3, 28, 28)
    torch.testing.assert_close(features(tv, x), features(model.backbone, x), rtol=1e-5, atol=1e-5)


def detectron2_names(depths=(3, 4, 6, 3)) -> set:
    """detectron2's ResNet parameter names (detectron2/modeling/backbone/resnet.py: BasicStem 'stem.conv1' with
    its norm; stages res2..res5 of BottleneckBlocks conv1..conv3, each with a 'norm'; the first block of a stage
    has a 'shortcut' conv with its norm), written out from its documentation, not from eval.export."""
    bn = ("weight", "bias", "running_mean", "running_var")
    names = {"stem.conv1.weight"} | {f"stem.conv1.norm.{b}" for b in bn}
    for s, n in zip(range(2, 6), depths):
        for i in range(n):
            for c in ("conv1", "conv2", "conv3") + (("shortcut",) if i == 0 else ()):
                names |= {f"res{s}.{i}.{c}.weight"} | {f"res{s}.{i}.{c}.norm.{b}" for b in bn}
    return names


def test_detectron2_export_follows_mocos_converter_key_by_key(tmp_path):
    ck, model = checkpoint(tmp_path, method="moco", arch="resnet50")
    out = tmp_path / "r50.pkl"
    export.main(["--checkpoint", str(ck), "--format", "detectron2", "--out", str(out)])
    with open(out, "rb") as f:
        obj = pickle.load(f)
    assert obj["matching_heuristics"] is True and isinstance(obj["__author__"], str)
    assert set(obj["model"]) == detectron2_names()
    sd = model.backbone.state_dict()
    pairs = {"stem.conv1.weight": "conv1.weight", "stem.conv1.norm.running_var": "bn1.running_var",
             "res2.0.shortcut.weight": "layer1.0.downsample.0.weight",
             "res2.0.shortcut.norm.bias": "layer1.0.downsample.1.bias",
             "res4.5.conv3.norm.running_mean": "layer3.5.bn3.running_mean",
             "res5.2.conv2.weight": "layer4.2.conv2.weight"}
    for d2, ours in pairs.items():
        assert isinstance(obj["model"][d2], np.ndarray) and np.array_equal(obj["model"][d2], sd[ours].numpy()), d2


def test_bad_input_is_one_error_line(tmp_path, capsys):
    ck, _ = checkpoint(tmp_path)
    tv = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), tv)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    for argv, msg in ((["--checkpoint", str(tv), "--format", "timm"], "not a checkpoint of this project's train.py"),
                      (["--checkpoint", str(ck), "--format", "onnx"], "--format onnx: cannot write it"),
                      (["--checkpoint", str(junk), "--format", "timm"], "cannot be read"),
                      (["--checkpoint", str(ck), "--format", "timm", "--network", "target"], "online or momentum")):
        with pytest.raises(SystemExit) as e:
            export.main(argv + ["--out", str(tmp_path / "o.pth")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and msg in err, err
    sim, _ = checkpoint(tmp_path, method="simclr", name="simclr.pt")
    with pytest.raises(SystemExit):
        export.main(["--checkpoint", str(sim), "--network", "momentum", "--format", "timm", "--out", str(tv)])
    assert "a simclr run has no momentum network" in capsys.readouterr().err


def foreign_forms(net) -> dict:
    """The same ResNet weights as torchvision, timm, MoCo v2's official checkpoint, solo-learn and lightly save
    them."""
    sd = net.state_dict()
    body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    seq = nn.Sequential(*list(net.children())[:-1]).state_dict()
    return {"torchvision": sd, "timm": body,
            "moco": {"arch": "x", "state_dict": {f"module.encoder_q.{k}": v for k, v in body.items()}
                     | {f"module.encoder_k.{k}": v * 0 for k, v in body.items()}},
            "solo-learn": {"state_dict": {f"backbone.{k}": v for k, v in body.items()}},
            "lightly": {f"backbone.{k}": v for k, v in seq.items()}}


@pytest.mark.parametrize("arch,small,width", [("resnet18", False, 64), ("resnet50", False, 64),
                                              ("resnet10", True, 32), ("resnet34", True, 16)])
def test_foreign_weights_say_what_network_they_hold(tmp_path, arch, small, width):
    from models.backbones import build_backbone
    torch.manual_seed(1)
    net, _ = build_backbone(arch, small, 1, width=width)
    net.fc = nn.Linear(_dim(net), 10)
    x = torch.randn(2, 3, 32, 32)
    ref = features(nn.Sequential(*list(net.children())[:-1], nn.Flatten()), x)
    for form, obj in foreign_forms(net).items():
        torch.save(obj, tmp_path / "w.pth")
        enc, desc = load_encoder(str(tmp_path / "w.pth"))
        assert (desc["arch"], desc["small_stem"], desc["width"]) == (arch, small, width), form
        torch.testing.assert_close(features(enc, x), ref, rtol=1e-5, atol=1e-5, msg=form)
    wrong = "resnet50" if arch != "resnet50" else "resnet18"
    stem = "3x3 small-image" if small else "7x7 ImageNet"
    with pytest.raises(UsageError, match=rf"holds a {arch}, width {width}, {stem} stem; drop --arch"):
        load_encoder(str(tmp_path / "w.pth"), arch=wrong)


def test_the_evaluations_take_a_foreign_small_stems_stride(tmp_path):
    """The stride of a 3x3 stem is not in the weights: the evaluations' --stem-stride sets it (default 1), and the
    features are those of the network that was saved."""
    from eval.features import load_run
    from eval.linear import build_parser
    from models.backbones import build_backbone
    torch.manual_seed(2)
    net, _ = build_backbone("resnet10", True, 2, width=16)
    torch.save(foreign_forms(net)["solo-learn"], tmp_path / "w.pth")
    x = torch.randn(2, 3, 32, 32)
    ref = features(nn.Sequential(*list(net.children())[:-1], nn.Flatten()), x)
    _, model = load_run(str(tmp_path / "w.pth"), stem_stride=2)
    assert model.backbone.conv1.stride == (2, 2)
    torch.testing.assert_close(features(model.backbone, x), ref, rtol=1e-5, atol=1e-5)
    _, model = load_run(str(tmp_path / "w.pth"))
    assert model.backbone.conv1.stride == (1, 1)   # the default: solo-learn's and lightly's CIFAR ResNets
    _, model = load_run(str(tmp_path / "w.pth"), random_init=True, stem_stride=2)
    assert model.backbone.conv1.stride == (2, 2)
    a = build_parser().parse_args(["--checkpoint", "w.pth", "--stem-stride", "2"])
    assert a.stem_stride == 2


def _dim(net):
    last = net.layer4[-1]
    return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features


def test_mine_and_the_evaluations_take_torchvision_weights_without_arch(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    r = run_here(["-m", "mining.mine", "--encoder", str(tmp_path / "resnet18.pth"), "--dataset", "fashion-mnist",
                  "--subset", "64", "--k", "2", "--out", str(tmp_path / "p.pt"), "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    meta = torch.load(tmp_path / "p.pt", weights_only=False)["meta"]
    assert meta["encoder_desc"]["arch"] == "resnet18" and meta["encoder_desc"]["small_stem"] is False
    r = run_here(["-m", "mining.mine", "--encoder", str(tmp_path / "resnet18.pth"), "--arch", "resnet50",
                  "--out", str(tmp_path / "p.pt")])
    assert r.returncode == 2 and "holds a resnet18, width 64, 7x7 ImageNet stem; drop --arch" in r.stderr
    from eval import knn
    out = knn.main(["--checkpoint", str(tmp_path / "resnet18.pth"), "--n-train", "200", "--n-test", "100",
                    "--res", "32", "--no-progress", "--json", str(tmp_path / "k.json")])
    assert 35 < out["trained"]["k20"] <= 100 and out["n_test"] == 100   # random ResNet-18 features: ~60%, chance 10%


def test_projection_separates_clusters_and_auto_falls_back_to_tsne():
    from eval.embedding import project
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (60, 16)), rng.normal(0, 1, (60, 16)) + 8])
    for method in ("pca", "tsne"):
        xy, used = project(x, method)
        a, b = xy[:60], xy[60:]
        gap = np.linalg.norm(a.mean(0) - b.mean(0))
        assert xy.shape == (120, 2) and gap > 3 * max(a.std(0).max(), b.std(0).max()), method
    try:
        import umap  # noqa: F401
        want = "UMAP"
    except ImportError:
        want = "t-SNE"
    assert project(x, "auto")[1] == want


@needs_fashion
def test_the_embedding_picture_of_two_runs_side_by_side(tmp_path):
    from PIL import Image
    a, _ = checkpoint(tmp_path, method="simclr", arch="resnet10", small_stem=True, stem_stride=2, name="a.pt")
    b, _ = checkpoint(tmp_path, method="byol", arch="resnet10", small_stem=True, stem_stride=2, name="b.pt")
    out = tmp_path / "emb.png"
    r = run_here(["-m", "eval.plot", "--embedding", str(a), "--embedding", str(b), "--n", "300", "--method", "pca",
                  "--out", str(out), "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"embedding (PCA): {out}" in r.stdout
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[1] > 1.8 * img.shape[0] and img.std() > 10   # two panels side by side, not blank


@needs_fashion
def test_the_embedding_picture_takes_a_foreign_small_stems_stride(tmp_path):
    """eval.plot --embedding --stem-stride, as the evaluations: the stride reaches the network that is drawn."""
    from PIL import Image

    from eval.embedding import set_features
    from models.backbones import build_backbone
    from tests.conftest import FASHION
    net, _ = build_backbone("resnet10", True, 2, width=16)
    torch.save(foreign_forms(net)["solo-learn"], tmp_path / "w.pth")
    w, data = str(tmp_path / "w.pth"), ("fashion-mnist", FASHION)
    f1, y1, _ = set_features(w, 16, *data)
    f2, y2, _ = set_features(w, 16, *data, stem_stride=2)
    assert f1.shape == f2.shape and (y1 == y2).all() and not np.allclose(f1, f2, atol=1e-3)
    drawn = []
    for stride in ("1", "2"):   # the CLI's pictures differ by the stride: it reaches the network drawn
        out = tmp_path / f"e{stride}.png"
        r = run_here(["-m", "eval.plot", "--embedding", w, "--stem-stride", stride, "--dataset", data[0], "--data",
                      data[1], "--n", "64", "--method", "pca", "--out", str(out), "--no-progress"])
        assert r.returncode == 0, r.stderr[-2000:]
        drawn.append(np.asarray(Image.open(out).convert("RGB")))
    assert drawn[0].shape == drawn[1].shape and not np.array_equal(*drawn)
