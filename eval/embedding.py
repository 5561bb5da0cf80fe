"""A picture of the embedding: the test set's backbone features projected to 2-D (UMAP where umap-learn is
installed, otherwise t-SNE from scikit-learn, or PCA), coloured by label, one panel per checkpoint.

    python -m eval.plot --embedding RUN/last.pt                       # -> RUN/embedding.png
    python -m eval.plot --embedding runs/base/last.pt --embedding runs/bsim/last.pt --out side_by_side.png
"""
from __future__ import annotations

import argparse
import importlib.util
import os

import numpy as np
import torch

from engine.errors import UsageError, parser_error_one_line
from eval.features import STEM_STRIDE_HELP, eval_sources, load_run
from loaders.datasets import DEFAULT_RES

METHODS = ("auto", "umap", "tsne", "pca")
NEEDS = {"umap": ("umap", "umap-learn"), "tsne": ("sklearn", "scikit-learn")}   # method: (module, package)


def check_method(method: str, flag: str = "--method"):
    """One line, before any work, for a projection that is unknown or whose package is not installed."""
    if method not in METHODS:
        raise UsageError(f"{flag} {method}: choose from {', '.join(METHODS)}")
    module, package = NEEDS.get(method, (None, None))
    if module and importlib.util.find_spec(module) is None:
        raise UsageError(f"{flag} {method}: {package} is not installed (pip install {package})")


def project(x: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """[N, D] features -> ([N, 2], the method used). auto: UMAP if installed, else t-SNE, else PCA."""
    if len(x) < 10:   # too few points for a neighbourhood embedding
        method = "pca"
    if method in ("auto", "umap"):
        try:
            import umap
            return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
        except ImportError:
            if method == "umap":
                raise UsageError("--method umap: umap-learn is not installed (pip install umap-learn)")
    if method in ("auto", "tsne"):
        try:
            from sklearn.manifold import TSNE
            return TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, len(x) - 1)
                        ).fit_transform(x), "t-SNE"
        except ImportError:
            if method == "tsne":
                raise UsageError("--method tsne: scikit-learn is not installed (pip install scikit-learn)")
    x = x - x.mean(0)   # PCA by SVD: the two leading directions
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T, "PCA"


def set_features(checkpoint: str, n: int, dataset=None, data=None, device="cpu", progress=False, stem_stride=1):
    """(features [n, D] of n seeded test images, their labels, class names) of a checkpoint's backbone;
    stem_stride: as eval.features.load_run, for foreign weights with a small stem."""
    from loaders.embed import Images, extract_sharded
    from eval.subset import pick
    cfg, model = load_run(checkpoint, stem_stride=stem_stride)
    _, test, norm = eval_sources(cfg, dataset, data)
    idx = pick(n, len(test))
    res = cfg["res"] or DEFAULT_RES.get(test.name, 224)
    f, y = extract_sharded(model.backbone.to(device), Images(test, res, norm, indices=idx), torch.device(device),
                           progress=progress, desc="test features")
    names = getattr(test, "classes", None) or getattr(getattr(test, "src", None), "classes", None)
    return f.float().cpu().numpy(), y.cpu().numpy(), names


def draw(panels: list[tuple[str, np.ndarray, np.ndarray]], names, path: str, method: str):
    """One scatter per (title, [N, 2] points, labels), in a row."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    for ax, (title, xy, y) in zip(axes[0], panels):
        for c in np.unique(y):
            m = y == c
            label = names[c] if names is not None and 0 <= c < len(names) else str(c)
            ax.scatter(xy[m, 0], xy[m, 1], s=3, alpha=0.7, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(fontsize=6, markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"test-set backbone features, {method}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def embedding_figure(panels: list[tuple[str, str]], path: str, *, n: int = 2000, method: str = "auto",
                     test_set: tuple[str | None, str | None] = (None, None), device="cpu", progress=False,
                     stem_stride: int = 1) -> str:
    """One panel per (title, checkpoint), drawn to `path`; test_set (dataset, data): another labelled set than
    the runs' own; stem_stride: the stride of foreign weights' small stem (eval.features.load_run). -> the projection used."""
    drawn, names, used = [], None, method
    dataset, data = test_set
    for title, ck in panels:
        f, y, names = set_features(ck, n, dataset=dataset, data=data, device=device, progress=progress,
                                   stem_stride=stem_stride)
        xy, used = project(f, method)
        drawn.append((title, xy, y))
    draw(drawn, names, path, used)
    return used


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m eval.plot --embedding", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_error_one_line(p)
    p.add_argument("--embedding", action="append", required=True, metavar="CHECKPOINT",
                   help="RUN/last.pt or ResNet weights (repeat for panels side by side)")
    p.add_argument("--title", action="append", default=None, help="a panel's title (default: the run folder)")
    p.add_argument("--n", type=int, default=2000, help="test images drawn (seeded; 0: all)")
    p.add_argument("--method", default="auto", help=" | ".join(METHODS))
    p.add_argument("--data", default=None, help="another labelled set (default: the run's)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--stem-stride", type=int, default=1, help=STEM_STRIDE_HELP)
    p.add_argument("--out", default=None, help="PNG path (default: RUN/embedding.png)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    check_method(a.method)
    titles = a.title or [os.path.basename(os.path.dirname(os.path.abspath(c))) for c in a.embedding]
    if len(titles) != len(a.embedding):
        raise UsageError(f"{len(titles)} --title for {len(a.embedding)} --embedding: give one per panel, or none")
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.embedding[0])), "embedding.png")
    used = embedding_figure(list(zip(titles, a.embedding)), out, n=a.n, method=a.method,
                            test_set=(a.dataset, a.data), device=a.device, progress=not a.no_progress,
                            stem_stride=a.stem_stride)
    print(f"embedding ({used}): {out}", flush=True)
    return out
