"""Export a trained backbone for other code: torchvision, timm or detectron2.

    python -m eval.export --checkpoint RUN/last.pt --format torchvision --out r18.pth
    python -m eval.export --checkpoint RUN/last.pt --network momentum --format timm --out r50_timm.pth
    python -m eval.export --checkpoint RUN/last.pt --format detectron2 --out r50_d2.pkl

torchvision: `torchvision.models.resnetNN()` loads the file with strict=True (fc is written as zeros, to be
replaced or dropped: `model.fc = nn.Identity()` gives our backbone's features). timm:
`timm.create_model("resnetNN", num_classes=0)` loads it with strict=True (no fc). detectron2: MoCo's
converter's conventions (keys renamed to detectron2's ResNet names: stem.conv1, res2..res5, convK.norm,
shortcut; numpy arrays in a pickle with `__author__` and `matching_heuristics`), for the R50 configs of
docs/DETECTION.md. A small-stem or narrower network is exported as it is; what a loader then needs is printed.
"""
from __future__ import annotations

import argparse
import os
import pickle

import torch

from engine.errors import parser_error_one_line
from engine.errors import UsageError, cli_main

FORMATS = ("torchvision", "timm", "detectron2")


def backbone_state(checkpoint: str, network: str = "online") -> tuple[dict, dict, int]:
    """(the backbone's state dict under torchvision's names, the run's config, its feature dimension) of a
    train.py checkpoint."""
    from engine import ckpt
    from models.methods import build_model_from_config
    state = ckpt.load(checkpoint)
    cfg = state.get("config") if isinstance(state, dict) else None
    if cfg is None or "model" not in state:
        raise UsageError(f"--checkpoint {checkpoint}: not a checkpoint of this project's train.py (no config and "
                         "model inside)")
    model = build_model_from_config(cfg)
    model.load_state_dict(state["model"])
    if network == "momentum":
        if not model.momentum_encoder:
            raise UsageError(f"--network momentum: a {cfg['method']} run has no momentum network")
        backbone = model.target[0]
    else:
        backbone = model.backbone
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}, cfg, model.feat_dim


def torchvision_state(sd: dict, dim: int) -> dict:
    """torchvision's resnetNN() keys: ours plus an fc of zeros (1000 classes), so strict=True loads it."""
    return {**sd, "fc.weight": torch.zeros(1000, dim), "fc.bias": torch.zeros(1000)}


def detectron2_key(k: str) -> str:
    """torchvision ResNet name -> detectron2's (as MoCo's convert-pretrain-to-detectron2 renames them)."""
    if not k.startswith("layer"):
        k = "stem." + k
    for t in (1, 2, 3, 4):
        k = k.replace(f"layer{t}.", f"res{t + 1}.")
    for t in (1, 2, 3):
        k = k.replace(f"bn{t}.", f"conv{t}.norm.")
    return k.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")


def detectron2_state(sd: dict) -> dict:
    model = {detectron2_key(k): v.numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    return {"model": model, "__author__": "ssl (eval.export)", "matching_heuristics": True}


def loader_notes(cfg: dict, fmt: str) -> list[str]:
    """What a loader of `fmt` needs beyond its stock constructor, for a non-standard network."""
    arch, notes = cfg["arch"], []
    if fmt == "timm" and arch == "resnet10":
        notes.append("timm has no resnet10: timm.models.resnet.ResNet(block=BasicBlock, layers=[1, 1, 1, 1], "
                     "num_classes=0)")
    if fmt == "torchvision" and arch == "resnet10":
        notes.append("torchvision has no resnet10: ResNet(BasicBlock, [1, 1, 1, 1]) from torchvision.models.resnet")
    if cfg.get("width", 64) != 64:
        notes.append(f"width {cfg['width']} (stock ResNets: 64): every stage has {cfg['width']}/64 of the channels; "
                     "build the network with models.backbones.build_backbone(..., width=...) or load it here")
    if cfg.get("small_stem"):
        s = cfg.get("stem_stride", 1)
        if fmt == "detectron2":
            notes.append(f"small stem: stem.conv1 is 3x3 stride {s} and there is no max-pool; detectron2's "
                         "BasicStem is 7x7 stride 2 + max-pool: register a stem of that shape, or transfer a "
                         "network trained with the ImageNet stem (--no-small-stem)")
        else:
            notes.append(f"small stem: before loading, set model.conv1 = nn.Conv2d(3, {cfg.get('width', 64)}, 3, "
                         f"{s}, 1, bias=False) and model.maxpool = nn.Identity()")
    return notes


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("--checkpoint", required=True, help="RUN/last.pt")
    p.add_argument("--network", default="online", help="online | momentum (MoCo, BYOL: the momentum network)")
    p.add_argument("--format", required=True, help=" | ".join(FORMATS))
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.format not in FORMATS:
        raise UsageError(f"--format {a.format}: cannot write it (choose from {', '.join(FORMATS)})")
    if a.network not in ("online", "momentum"):
        raise UsageError(f"--network {a.network}: online or momentum")
    if not os.path.isdir(os.path.dirname(os.path.abspath(a.out))):
        raise UsageError(f"--out {a.out}: no such directory")
    sd, cfg, dim = backbone_state(a.checkpoint, a.network)
    if a.format == "detectron2":
        with open(a.out, "wb") as f:
            pickle.dump(detectron2_state(sd), f)
    else:
        # timm's ResNets name their weights as torchvision does; with num_classes=0 there is no fc
        torch.save(torchvision_state(sd, dim) if a.format == "torchvision" else sd, a.out)
    print(f"wrote {a.out}: the {a.network} {cfg['arch']} backbone of a {cfg['method']} run, {a.format} format "
          f"({len(sd)} tensors)", flush=True)
    for n in loader_notes(cfg, a.format):
        print(f"note: {n}", flush=True)
    return a.out


if __name__ == "__main__":
    main()
