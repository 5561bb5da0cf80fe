"""Top-k cosine neighbours of L2-normalised embeddings, with a similarity threshold.

    sims, ids = search(queries, keys, k=1, threshold=0.5, backend="auto", exclude_self=True)

Back ends, all giving the same answer on the same data (tests/test_mining.py checks them against brute force):
- "faiss": an exact inner-product flat index (IndexFlatIP); on a GPU when faiss has GPU support and CUDA
  is present (faiss-gpu), else on the CPU (faiss-cpu).
- "faiss-ivf": IndexIVFFlat (inverted lists, nprobe of them searched): approximate, for large sets; its
  recall against exact search is what `recall()` measures.
- "torch": exact, chunked matmul + topk on any device (no faiss needed); never stores more than
  chunk x N scores.
"auto": faiss when importable, else torch.

Neighbours below `threshold` (or missing) come back as id -1 and similarity -inf. With exclude_self, query i
is the key i (the whole set against itself) and is not its own neighbour.
"""
from __future__ import annotations

import math

import numpy as np
import torch

BACKENDS = ("auto", "faiss", "faiss-ivf", "torch")


def _faiss():
    try:
        import faiss
        return faiss
    except ImportError:
        return None


def _finish(sims: torch.Tensor, ids: torch.Tensor, k: int, threshold: float, exclude_self: bool):
    """Drop self-matches, keep k, mask below threshold."""
    if exclude_self:
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
        self_hit = ids == rows
        sims = sims.masked_fill(self_hit, float("-inf"))
        order = sims.argsort(dim=1, descending=True, stable=True)
        sims, ids = sims.gather(1, order), ids.gather(1, order)
    sims, ids = sims[:, :k], ids[:, :k]
    bad = (sims < threshold) | (ids < 0) | torch.isinf(sims)
    return sims.masked_fill(bad, float("-inf")), ids.masked_fill(bad, -1)


def block_topk(scores: torch.Tensor, k: int, block: int = 1024):
    """Exact top-k per row in two cheap passes instead of one topk over a very long row: the k best entries
    lie in the k blocks with the largest maxima, so take each block's max (a reduction), pick k blocks,
    and run topk over those k*block candidates only."""
    R, N = scores.shape
    nb = N // block
    if nb <= k:
        return scores.topk(k, dim=1)
    head = scores[:, :nb * block].view(R, nb, block)
    best_blocks = head.amax(2).topk(k, dim=1).indices                      # [R, k]
    cols = (best_blocks[:, :, None] * block + torch.arange(block, device=scores.device)).view(R, -1)
    cand = scores.gather(1, cols)
    if nb * block < N:  # the ragged tail is always a candidate
        tail = torch.arange(nb * block, N, device=scores.device).expand(R, -1)
        cols, cand = torch.cat([cols, tail], 1), torch.cat([cand, scores[:, nb * block:]], 1)
    v, j = cand.topk(k, dim=1)
    return v, cols.gather(1, j)


def search_torch(q: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 4096, block: int = 1024):
    """Exact search: chunks of rows, scores in the keys' dtype (bf16/fp16 on GPU halves the traffic),
    block_topk selection. Returns float32 similarities recomputed in fp32 for the chosen ids."""
    out_s, out_i = [], []
    k = min(k, keys.shape[0])
    for s in range(0, q.shape[0], chunk):
        qs = q[s:s + chunk]
        _, i = block_topk(qs.to(keys.dtype) @ keys.T, k, block)
        v = (qs.float()[:, None, :] * keys[i].float()).sum(-1)       # exact fp32 similarities of the winners
        v, o = v.sort(dim=1, descending=True, stable=True)
        out_s.append(v)
        out_i.append(i.gather(1, o))
    return torch.cat(out_s), torch.cat(out_i)


def search_faiss(q: np.ndarray, keys: np.ndarray, k: int, ivf: bool = False, nlist: int = 0, nprobe: int = 16):
    faiss = _faiss()
    d = keys.shape[1]
    if ivf:
        nlist = nlist or max(1, int(4 * math.sqrt(keys.shape[0])))
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, min(nlist, keys.shape[0]), faiss.METRIC_INNER_PRODUCT)
        index.train(keys)
        index.nprobe = nprobe
    else:
        index = faiss.IndexFlatIP(d)
    if torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), torch.cuda.current_device(), index)
    index.add(keys)
    s, i = index.search(q, min(k, keys.shape[0]))
    return torch.from_numpy(s), torch.from_numpy(i)


def search(queries: torch.Tensor, keys: torch.Tensor | None = None, k: int = 1, threshold: float = -1.0,
           backend: str = "auto", exclude_self: bool = False, chunk: int = 4096, nprobe: int = 16):
    """(sims [Q, k] float32, ids [Q, k] int64) on the queries' device; ids -1 where no neighbour passes."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend}: choose from {', '.join(BACKENDS)}")
    keys = queries if keys is None else keys
    kk = k + 1 if exclude_self else k
    if backend == "auto":
        backend = "faiss" if _faiss() is not None else "torch"
    if backend == "torch":
        s, i = search_torch(queries, keys, kk, chunk)
    else:
        if _faiss() is None:
            raise ValueError(f"backend {backend}: faiss is not installed (pip install faiss-cpu)")
        qn = np.ascontiguousarray(queries.detach().float().cpu().numpy())
        kn = qn if keys is queries else np.ascontiguousarray(keys.detach().float().cpu().numpy())
        s, i = search_faiss(qn, kn, kk, ivf=backend == "faiss-ivf", nprobe=nprobe)
        s, i = s.to(queries.device), i.to(queries.device).long()
    return _finish(s.float(), i.long(), k, threshold, exclude_self)


def recall(approx_ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    """Share of the exact neighbours (id >= 0) that the approximate search also found."""
    hit = (approx_ids[:, :, None] == exact_ids[:, None, :]).any(1) & (exact_ids >= 0)
    return float(hit.sum() / (exact_ids >= 0).sum().clamp(min=1))
