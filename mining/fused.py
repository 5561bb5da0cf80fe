"""Exact top-k inner-product search whose score matrix is never stored (Triton, GPU).

The whole-set kNN of SePP's refresh (1.28M x 1.28M scores for ImageNet) is bound by moving the scores,
not by computing them: a matmul writes each bf16 score and a top-k reads it back, 3.2 TB each way. Here one
kernel computes a [BM, BN] tile of scores in registers and keeps only each row's maximum over the tile
(one fp32 per BN scores), so the product's output is 1/BN of the matrix. The k best scores of a row lie in
the k tiles with the largest maxima; a second kernel scores those k x BN candidates again in fp32 and the
top k of them are the answer. Exact: tests/test_mining.py checks it against brute force, on the GPU
and on the CPU through Triton's interpreter (TRITON_INTERPRET=1).

    sims, ids = topk_ip(queries, keys, k)      # CUDA tensors (bf16/fp16/fp32), any dim
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:      # torch CPU wheels without triton: the unfused search in mining/index.py is used
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
MAX_RESIDENT = 256      # dims up to this: the query tile stays in registers; above: swept in chunks


def available(t: torch.Tensor) -> bool:
    """Whether the fused search can run on tensors like `t` (CUDA + triton, or Triton's CPU interpreter)."""
    return triton is not None and (t.is_cuda or INTERPRET)


if triton is not None:
    @triton.jit
    def _tile_max(q_ptr, k_ptr, out_ptr, M, N, D, NB, sq, sk, so,
                  BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, TILES: tl.constexpr,
                  IEEE: tl.constexpr, RESIDENT: tl.constexpr):
        """out[m, t] = max over the columns n of tile t of <q[m], k[n]>, for TILES consecutive tiles.
        RESIDENT: the query tile (all D <= 256 dims) stays in registers; else D is swept in BD chunks."""
        pid_m = tl.program_id(0)
        pid_t = tl.program_id(1)
        rows = (pid_m * BM + tl.arange(0, BM)).to(tl.int64)     # 64-bit offsets: N x D passes 2^31
        dims = tl.arange(0, BD)
        if RESIDENT:
            q = tl.load(q_ptr + rows[:, None] * sq + dims[None, :],
                        mask=(rows[:, None] < M) & (dims[None, :] < D), other=0.0)
        for j in range(TILES):
            t = pid_t * TILES + j
            cols = (t * BN + tl.arange(0, BN)).to(tl.int64)
            if RESIDENT:
                kt = tl.load(k_ptr + cols[None, :] * sk + dims[:, None],
                             mask=(cols[None, :] < N) & (dims[:, None] < D), other=0.0)      # [BD, BN]
                if IEEE:     # fp32 inputs: full fp32 products, not tf32
                    s = tl.dot(q, kt, input_precision="ieee")
                else:
                    s = tl.dot(q, kt)                                                       # fp32 [BM, BN]
            else:
                s = tl.zeros((BM, BN), dtype=tl.float32)
                for d0 in range(0, D, BD):
                    dd = d0 + dims
                    qc = tl.load(q_ptr + rows[:, None] * sq + dd[None, :],
                                 mask=(rows[:, None] < M) & (dd[None, :] < D), other=0.0)
                    kc = tl.load(k_ptr + cols[None, :] * sk + dd[:, None],
                                 mask=(cols[None, :] < N) & (dd[:, None] < D), other=0.0)
                    if IEEE:
                        s += tl.dot(qc, kc, input_precision="ieee")
                    else:
                        s += tl.dot(qc, kc)
            s = tl.where(cols[None, :] < N, s, float("-inf"))
            tl.store(out_ptr + rows * so + t, tl.max(s, axis=1), mask=(rows < M) & (t < NB))

    @triton.jit
    def _candidates(q_ptr, k_ptr, tiles_ptr, out_ptr, N, D, K, sq, sk, st, so,
                    BN: tl.constexpr, BD: tl.constexpr):
        """out[m, j * BN + c] = <q[m], k[tiles[m, j] * BN + c]> in fp32 (-inf past the last key)."""
        m = tl.program_id(0).to(tl.int64)
        dims = tl.arange(0, BD)
        for j in range(K):
            t = tl.load(tiles_ptr + m * st + j)          # int64
            cols = t * BN + tl.arange(0, BN)
            s = tl.zeros((BN,), dtype=tl.float32)
            for d0 in range(0, D, BD):
                dd = d0 + dims
                q = tl.load(q_ptr + m * sq + dd, mask=dd < D, other=0.0).to(tl.float32)
                kt = tl.load(k_ptr + cols[:, None] * sk + dd[None, :],
                             mask=(cols[:, None] < N) & (dd[None, :] < D), other=0.0).to(tl.float32)
                s += tl.sum(kt * q[None, :], axis=1)
            tl.store(out_ptr + m * so + j * BN + tl.arange(0, BN), tl.where(cols < N, s, float("-inf")))


# Launch settings of the tile-max kernel (scripts/sweep_fused.py times the alternatives on a GPU).
CONFIG = {"bm": 128, "tiles": 64, "num_warps": 4, "num_stages": 2}


def tile_maxima(q: torch.Tensor, keys: torch.Tensor, bn: int = 128, bm: int | None = None,
                tiles: int | None = None, num_warps: int | None = None, num_stages: int | None = None):
    """[Q, ceil(N / bn)] fp32: each row's best score in each tile of bn keys."""
    bm, tiles = bm or CONFIG["bm"], tiles or CONFIG["tiles"]
    launch = {"num_warps": num_warps or CONFIG["num_warps"], "num_stages": num_stages or CONFIG["num_stages"]}
    M, D = q.shape
    N = keys.shape[0]
    nb = triton.cdiv(N, bn)
    out = torch.empty(M, nb, device=q.device, dtype=torch.float32)
    tiles = min(tiles, nb)
    resident = D <= MAX_RESIDENT
    bd = max(16, triton.next_power_of_2(D)) if resident else 64
    grid = (triton.cdiv(M, bm), triton.cdiv(nb, tiles))
    _tile_max[grid](q, keys, out, M, N, D, nb, q.stride(0), keys.stride(0), out.stride(0),
                    BM=bm, BN=bn, BD=bd, TILES=tiles, IEEE=q.dtype == torch.float32, RESIDENT=resident,
                    **(launch if not INTERPRET else {}))
    return out


def topk_ip(q: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 65536, bn: int = 128):
    """(fp32 similarities [Q, k] best first, int64 ids [Q, k]) of the k largest inner products per query."""
    if q.dtype != keys.dtype:
        q = q.to(keys.dtype)
    q, keys = q.contiguous(), keys.contiguous()
    N = keys.shape[0]
    k = min(k, N)
    out_s, out_i = [], []
    chunk = max(1024, min(chunk, 2**31 // (4 * k * bn)))      # candidate scores: <= 2 GB per chunk
    for s in range(0, q.shape[0], chunk):
        qs = q[s:s + chunk]
        tiles = tile_maxima(qs, keys, bn).topk(min(k, triton.cdiv(N, bn)), dim=1).indices     # [R, k]
        cand = torch.empty(qs.shape[0], tiles.shape[1] * bn, device=q.device, dtype=torch.float32)
        _candidates[(qs.shape[0],)](qs, keys, tiles, cand, N, qs.shape[1], tiles.shape[1], qs.stride(0),
                                    keys.stride(0), tiles.stride(0), cand.stride(0),
                                    BN=bn, BD=min(128, max(16, triton.next_power_of_2(qs.shape[1]))))
        v, j = cand.topk(k, dim=1)
        cols = (tiles.gather(1, j // bn) * bn + j % bn)
        out_s.append(v)
        out_i.append(cols)
    return torch.cat(out_s), torch.cat(out_i)
