"""Pre-trained encoders for mining: ResNet weights in the forms users hold (torchvision, MoCo v2 official,
solo-learn, lightly) load into our backbone and give the features of the model they came from."""
import pytest
import torch
import torch.nn as nn
import torchvision

from engine.errors import UsageError
from mining.encoders import load_encoder


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    for m in net.modules():   # non-trivial BN statistics, so a BN buffer that does not load shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        feats = torch.flatten(net.avgpool(nn.Sequential(*list(net.children())[:-2])(x)), 1)
    return net, x, feats


def formats(net):
    sd = net.state_dict()
    body = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    seq = nn.Sequential(*list(net.children())[:-1]).state_dict()
    return {
        "torchvision": sd,
        "moco_v2_official": {"arch": "resnet18", "state_dict": {**{f"module.encoder_q.{k}": v for k, v in body.items()},
                                                                **{f"module.encoder_k.{k}": v * 0 for k, v in body.items()},
                                                                "module.encoder_q.fc.0.weight": torch.zeros(512, 512),
                                                                "module.queue": torch.zeros(128, 10)}},
        "solo_learn": {"state_dict": {**{f"backbone.{k}": v for k, v in body.items()},
                                      "projector.0.weight": torch.zeros(8, 512), "classifier.weight": torch.zeros(10, 512)}},
        "lightly": {f"backbone.{k}": v for k, v in seq.items()} | {"projection_head.layers.0.weight": torch.zeros(4, 512)},
    }


@pytest.mark.parametrize("fmt", ["torchvision", "moco_v2_official", "solo_learn", "lightly"])
def test_foreign_resnet_weights_give_the_features_of_their_model(reference, fmt, tmp_path):
    net, x, feats = reference
    path = tmp_path / f"{fmt}.pth"
    torch.save(formats(net)[fmt], path)
    enc, desc = load_encoder(str(path), arch="resnet18")
    with torch.no_grad():
        torch.testing.assert_close(enc(x), feats, rtol=1e-5, atol=1e-5)
    assert desc["keys"] == 120   # every weight and BN buffer of ResNet-18 without its fc


def test_unmappable_weights_and_our_checkpoints(reference, tmp_path):
    bad = tmp_path / "vit.pth"
    torch.save({"state_dict": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, bad)
    with pytest.raises(UsageError, match=r"no ResNet weights found \(found 1 keys, e.g. blocks.0.attn.qkv.weight"):
        load_encoder(str(bad), arch="resnet18")
    wrong = tmp_path / "tv.pth"
    torch.save(reference[0].state_dict(), wrong)
    with pytest.raises(UsageError, match="holds a resnet18, width 64, 7x7 ImageNet stem; drop --arch"):
        load_encoder(str(wrong), arch="resnet50")
    from models.methods import build_model_from_config
    cfg = {"method": "byol", "arch": "resnet10", "small_stem": True, "stem_stride": 2, "proj_hidden": 32,
           "proj_dim": 16, "pred_hidden": 16}
    model = build_model_from_config(cfg)
    with torch.no_grad():
        for p in model.target.parameters():
            p.add_(1.0)   # the momentum network differs from the online one
    ck = tmp_path / "last.pt"
    torch.save({"config": cfg, "model": model.state_dict()}, ck)
    online, _ = load_encoder(str(ck))
    momentum, desc = load_encoder(f"{ck}:momentum")
    assert desc["network"] == "momentum"
    assert torch.equal(online.conv1.weight, model.backbone.conv1.weight)
    assert torch.equal(momentum.conv1.weight, model.target[0].conv1.weight)
    proj, _ = load_encoder(str(ck), space="projector")
    with torch.no_grad():
        assert proj(torch.randn(2, 3, 28, 28)).shape == (2, 16)
