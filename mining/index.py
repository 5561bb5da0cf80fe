"""Top-k cosine neighbours of L2-normalised embeddings, with a similarity threshold.

    sims, ids = search(queries, keys, k=1, threshold=-1.0, backend="auto", exclude_self=True)

Back ends, all giving the same answer on the same data (tests/test_mining.py checks them against brute force):
- "faiss": an exact inner-product flat index (IndexFlatIP); on a GPU when faiss has GPU support and CUDA
  is present (faiss-gpu), else on the CPU (faiss-cpu).
- "faiss-ivf": IndexIVFFlat (inverted lists, nprobe of them searched): approximate, for large sets; its
  recall against exact search is what `recall()` measures.
- "torch": exact, on any device (no faiss needed): on CUDA a fused Triton product + top-k that never
  stores the scores (mining/fused.py), elsewhere chunked matmul + block top-k (never more than chunk x N
  scores).
"auto": torch where the fused kernel runs (CUDA + triton: exact and faster than FAISS-GPU's flat index),
else faiss when importable, else torch.

Neighbours below `threshold` (or missing) come back as id -1 and similarity -inf. With exclude_self, query i
is the key i (the whole set against itself) and is not its own neighbour.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine import dist
from mining import fused as fused_search

BACKENDS = ("auto", "faiss", "faiss-ivf", "torch")
CHUNK = 4096   # the unfused torch path's query rows per chunk: search_torch's, Backend's and mining.bench's default


def _faiss():
    try:
        import faiss
        return faiss
    except ImportError:
        return None


def _finish(sims: torch.Tensor, ids: torch.Tensor, k: int, threshold: float, exclude_self: bool, rows=None):
    """Drop self-matches (query j is key rows[j], default j), keep k, mask below threshold."""
    if exclude_self:
        rows = torch.arange(ids.shape[0], device=ids.device) if rows is None else rows.to(ids.device)
        self_hit = ids == rows[:, None]
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


def _rescore(q: torch.Tensor, keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """fp32 <q_r, keys[ids[r, j]]>, in row blocks of at most ~256 MB of gathered keys."""
    rows = max(1, 2**26 // (ids.shape[1] * keys.shape[1]))
    return torch.cat([(q[s:s + rows].float()[:, None, :] * keys[ids[s:s + rows]].float()).sum(-1)
                      for s in range(0, q.shape[0], rows)])


def search_torch(q: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = CHUNK, block: int = 1024,
                 fused: bool | None = None):
    """Exact search. On CUDA (with triton) the fused kernel of mining/fused.py, which never stores the
    scores; elsewhere chunks of rows, scores in the keys' dtype (bf16/fp16 on GPU halves the traffic) and
    block_topk selection. Returns the chosen ids' similarities in fp32 over the unrounded queries."""
    k = min(k, keys.shape[0])
    use_fused = fused_search.available(keys) if fused is None else fused
    out_s, out_i = [], []
    step = 65536 if use_fused else chunk
    for s in range(0, q.shape[0], step):
        qs = q[s:s + step]
        if use_fused:
            v, i = fused_search.topk_ip(qs, keys, k)
            if qs.dtype != keys.dtype:     # the kernel scored queries rounded to the keys' dtype
                v = _rescore(qs, keys, i)
        else:
            _, i = block_topk(qs.to(keys.dtype) @ keys.T, k, block)
            v = _rescore(qs, keys, i)
        v, o = v.sort(dim=1, descending=True, stable=True)
        out_s.append(v)
        out_i.append(i.gather(1, o))
    return torch.cat(out_s), torch.cat(out_i)


def search_faiss(q: np.ndarray, keys: np.ndarray, k: int, ivf: bool = False, nlist: int = 0, nprobe: int = 16):
    """FAISS inner-product search; the index lives on the GPU (trained there too) where faiss-gpu and CUDA
    are present."""
    faiss = _faiss()
    d = keys.shape[1]
    if ivf:
        nlist = min(nlist or max(1, int(4 * math.sqrt(keys.shape[0]))), keys.shape[0])
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexFlatIP(d)
    if torch.cuda.is_available() and hasattr(faiss, "StandardGpuResources"):
        res = faiss.StandardGpuResources()     # alive until the search below is done
        index = faiss.index_cpu_to_gpu(res, torch.cuda.current_device(), index)
    if ivf:
        index.train(keys)
        index.nprobe = min(nprobe, nlist, 2048)    # FAISS-GPU searches at most 2048 lists
    index.add(keys)
    s, i = index.search(q, min(k, keys.shape[0]))
    return torch.from_numpy(s), torch.from_numpy(i)


@dataclass(frozen=True)
class Backend:
    """Which search runs (one of BACKENDS) and its knobs: the torch path's rows per chunk, the IVF lists probed."""
    name: str = "auto"
    chunk: int = CHUNK
    nprobe: int = 16


def search(queries: torch.Tensor, keys: torch.Tensor | None = None, k: int = 1, *, threshold: float = -1.0,
           backend: Backend | str = "auto", exclude_self: bool = False, rows: torch.Tensor | None = None):
    """(sims [Q, k] float32, ids [Q, k] int64) on the queries' device; ids -1 where no neighbour passes.
    backend: a Backend, or its name with the default knobs.
    rows (with keys None): search only queries[rows] against the whole set (a rank's share of a
    whole-set search); exclude_self then drops each row's own id."""
    how = Backend(backend) if isinstance(backend, str) else backend
    if how.name not in BACKENDS:
        raise ValueError(f"backend {how.name}: choose from {', '.join(BACKENDS)}")
    if rows is not None and keys is not None:
        raise ValueError("rows selects queries of a whole-set search: give no keys")
    keys = queries if keys is None else keys
    q = queries if rows is None else queries[rows.to(queries.device)]
    kk = k + 1 if exclude_self else k
    name = how.name
    if name == "auto":
        name = "faiss" if _faiss() is not None and not fused_search.available(keys) else "torch"
    if name == "torch":
        s, i = search_torch(q, keys, kk, how.chunk)
    else:
        if _faiss() is None:
            raise ValueError(f"backend {name}: faiss is not installed (pip install faiss-cpu)")
        kn = np.ascontiguousarray(keys.detach().float().cpu().numpy())
        qn = kn if q is keys else np.ascontiguousarray(q.detach().float().cpu().numpy())
        s, i = search_faiss(qn, kn, kk, ivf=name == "faiss-ivf", nprobe=how.nprobe)
        s, i = s.to(queries.device), i.to(queries.device).long()
    return _finish(s.float(), i.long(), k, threshold=threshold, exclude_self=exclude_self, rows=rows)


def center(x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Centred cosine space: each row L2-normalised, minus the mean row (of `rows` only, a bool mask, if
    given), normalised again, in x's dtype. Post-ReLU backbone features have all cosines >= 0 (measured on
    Fashion-MNIST: mined neighbours 0.93-1.0), so no threshold separates neighbours there; centred, the
    cosines spread over [-1, 1]. Pass the whole set (under torchrun every rank holds it)."""
    f = torch.nn.functional.normalize(x.float(), dim=1)
    mean = (f if rows is None else f[rows]).mean(0)
    return torch.nn.functional.normalize(f - mean, dim=1).to(x.dtype)


def search_whole_set(x: torch.Tensor, k: int, threshold: float = -1.0, backend: str = "auto"):
    """Every row's neighbours among the other rows (exclude_self). Under torchrun each rank searches a
    contiguous 1/world of the queries against the whole set and the answers are all-gathered: every rank
    gets the same [N, k] answer, in 1/world of the time."""
    n, rank, world = x.shape[0], dist.rank(), dist.world()
    mine = torch.as_tensor(dist.share(n, rank, world), device=x.device)
    sims, ids = search(x, k=k, threshold=threshold, backend=backend, exclude_self=True, rows=mine)
    if world > 1:
        sims, ids = dist.gather_shares(sims, n, float("-inf")), dist.gather_shares(ids, n, -1)
    return sims, ids


def recall(approx_ids: torch.Tensor, exact_ids: torch.Tensor) -> float:
    """Share of the exact neighbours (id >= 0) that the approximate search also found."""
    hit = (approx_ids[:, :, None] == exact_ids[:, None, :]).any(1) & (exact_ids >= 0)
    return float(hit.sum() / (exact_ids >= 0).sum().clamp(min=1))
