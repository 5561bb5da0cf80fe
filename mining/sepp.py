"""SePP in the training loop: refresh the bank and the pair plan every --sepp-every epochs (after
--sepp-warmup), hand the plan to the loader (each anchor's positive decoded in the same batch), and give
each batch its positives (Batch.pos = partner[Batch.index])."""
from __future__ import annotations

import time

import numpy as np
import torch

from engine import dist
from engine.errors import UsageError
from engine.extension import Extension
from loaders.embed import Images
from mining.bank import agreement_words, embed_all, label_agreement
from mining.index import center, search_whole_set
from mining.sampler import PairPlan


def attach(loader, plan):
    """Install `plan` (epoch -> order) as the loader's sample order (loaders/batch.py, Loader.set_plan)."""
    try:
        loader.set_plan(plan)
    except ValueError as e:
        raise UsageError(f"--sepp: {e} (torch, device, dali and ffcv with --ffcv-order ours take a plan)")


class TrainBank:
    """--sepp-bank train: the bank filled from the training forward passes, with no pass of its own. A forward
    hook on the bank's network (the momentum/target one where the method has it) keeps the first output of
    each step (the first view of each sample in the batch: augmented, as NNCLR's support set), and
    collect() writes it, L2-normalised in fp16 and all-gathered over ranks, to the samples' rows."""

    def __init__(self, n: int, module: torch.nn.Module, device):
        self.n, self.device = n, device
        self.bank, self.filled, self.out, self.armed = None, None, None, False
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self.armed:
            self.out, self.armed = output.detach(), False

    def arm(self):
        self.out, self.armed = None, True

    def before_forward(self, batch, it):   # the step's hooks (engine/step.py)
        self.arm()

    def after_forward(self, batch, out, it):
        self.collect(batch.index)

    @torch.no_grad()
    def collect(self, index: torch.Tensor):
        if self.out is None:
            return
        B = index.shape[0]   # concatenated views: the first B rows are view 0
        f = torch.nn.functional.normalize(self.out[:B].float(), dim=1).half()
        idx = index.to(f.device)
        self.out = None
        if dist.active():
            f, idx = dist.all_gather(f), dist.all_gather(idx)
        if self.bank is None:
            self.bank = torch.zeros(self.n, f.shape[1], dtype=torch.float16, device=f.device)
            self.filled = torch.zeros(self.n, dtype=torch.bool, device=f.device)
        self.bank[idx] = f
        self.filled[idx] = True

    def fraction(self) -> float:
        return 0.0 if self.filled is None else self.filled.float().mean().item()


def keep_top(sims: torch.Tensor, ids: torch.Tensor, keep: float):
    """--sepp-keep: a threshold relative to the encoder's own similarity scale. Candidates below the (1 - keep)
    quantile of the anchors' rank-1 similarities are dropped, so about `keep` of the samples keep a positive,
    the most similar ones. -> (sims, ids, the threshold used)."""
    top = sims[:, 0][ids[:, 0] >= 0].float()
    if keep >= 1 or top.numel() == 0:
        return sims, ids, float("-inf")
    t = torch.quantile(top.cpu(), 1 - keep).item()
    bad = sims < t
    return sims.masked_fill(bad, float("-inf")), ids.masked_fill(bad, -1), t


class SePP(Extension):
    """SePP in the loop (engine/extension.py): a refresh at the start of the epochs it is due, the epoch's pair
    plan, each batch's positives, and the train bank's forward hooks."""
    log_keys = ("sepp_paired", "loss_sepp")

    def __init__(self, args, loader, source, normalize, device, *, rank, world, model=None):
        # sepp_paired: the batch's share with a positive, every method; loss_sepp: the term, where the method has
        # one of its own (BYOL, SimSiam); SimCLR's and MoCo's positives are in their loss's mask
        self.log_keys = ("sepp_paired",) + (("loss_sepp",) if getattr(model, "sepp_term", False) else ())
        if loader.order is not None and loader.order.n != len(source):
            raise UsageError(f"--sepp: the loader holds {loader.order.n} samples, the training set {len(source)}; "
                             "mining needs the same samples")
        if args.batch_size // world % 2:
            raise UsageError(f"--sepp pairs samples inside a batch: the per-rank batch ({args.batch_size // world}) "
                             "must be even")
        self.args, self.loader, self.source, self.normalize = args, loader, source, normalize
        self.device, self.rank, self.world = device, rank, world
        self.plan, self.partner = None, None
        self.refreshed = None   # the epoch of the last refresh (a resumed epoch is not refreshed again)
        self.encoder = None
        if args.sepp_encoder:   # fixed: embedded once, at the start of the run (mining/encoders.py: its forms)
            from mining.encoders import load_encoder
            self.encoder = load_encoder(args.sepp_encoder, stem_stride=args.stem_stride, space=args.sepp_space,
                                        flag="--sepp-encoder")[0].to(device)
        self.fixed = False   # --sepp-pairs: one plan for the whole run
        if args.sepp_pairs:
            self.use_pairs(args.sepp_pairs)
        self.train_bank = None
        if args.sepp_bank == "train":   # without --sepp-encoder (extensions.py)
            i = 0 if args.sepp_space == "backbone" else 1
            module = model.target[i] if model.momentum_encoder else (model.backbone, model.projector)[i]
            self.train_bank = TrainBank(len(source), module, device)

    def use_pairs(self, path: str):
        """The positives of a pairs file (mining/mine.py) for the whole run, if it was mined on these samples."""
        from loaders.datasets import fingerprint
        try:
            pairs = torch.load(path, map_location="cpu", weights_only=False)
            meta, ids, sims = pairs["meta"], pairs["ids"].long(), pairs["sims"].float()
        except Exception as e:
            raise UsageError(f"--sepp-pairs {path}: not a pairs file of python -m mining.mine ({type(e).__name__})")
        mine = (len(self.source), fingerprint(self.source))
        if (meta.get("n"), meta.get("fingerprint")) != mine:
            raise UsageError(f"--sepp-pairs {path}: mined on {meta.get('n')} samples of {meta.get('dataset')} "
                             f"(fingerprint {meta.get('fingerprint')}), this run trains on {mine[0]} samples "
                             f"(fingerprint {mine[1]}): mine again with the same --dataset/--data/--subset/--seed/"
                             "--val-split, or the same --beton")
        a = self.args
        sims, ids = sims[:, :a.sepp_k], ids[:, :a.sepp_k]
        bad = (sims < a.sepp_threshold) | (ids < 0)
        sims, ids, _ = keep_top(sims.masked_fill(bad, float("-inf")), ids.masked_fill(bad, -1), a.sepp_keep)
        self.plan, self.fixed = PairPlan(ids.numpy(), a.seed), True
        attach(self.loader, self.plan)
        got, agree = label_agreement(np.asarray(self.source.labels), self.plan.plan(0)[1])
        if self.rank == 0:
            print(f"SePP pairs from {path} ({meta.get('encoder_desc', {}).get('kind')} encoder, k={a.sepp_k} of "
                  f"{ids.shape[1]}): {got:.0%} of samples paired, {agreement_words(agree)}", flush=True)

    def before_forward(self, batch, it):
        """The step's hooks (engine/step.py): the bank's network output of this step is kept (--sepp-bank train)."""
        if self.train_bank is not None:
            self.train_bank.before_forward(batch, it)

    def after_forward(self, batch, out, it):
        if self.train_bank is not None:
            self.train_bank.after_forward(batch, out, it)
        if batch.pos is not None:   # the batch's share with a semantic positive (logged for every method)
            out["sepp_paired"] = (batch.pos >= 0).float().mean()

    def space(self, backbone, projector):
        """The network whose L2-normalised output is the bank: the backbone, or backbone + projector."""
        return backbone if self.args.sepp_space == "backbone" else torch.nn.Sequential(backbone, projector)

    def due(self, epoch: int) -> bool:
        a = self.args
        if self.fixed or self.refreshed == epoch:
            return False
        if self.encoder is not None:   # a fixed encoder: mined at the start (no warm-up to wait for), never again
            return self.plan is None
        return epoch >= a.sepp_warmup and (self.plan is None or (epoch - a.sepp_warmup) % a.sepp_every == 0)

    def refresh(self, epoch: int, model, progress=False) -> dict:
        """New bank (momentum/target encoder if the method has one), neighbours, and pair plan."""
        a, t0 = self.args, time.perf_counter()
        tb = self.train_bank
        if tb is not None and tb.fraction() >= 0.9:   # filled by the epochs since the last refresh: no pass
            bank, filled, source = tb.bank, tb.filled, "train"
        else:   # --sepp-bank pass, or a train bank not yet filled (the first refresh, or after --resume)
            enc = self.encoder or (self.space(*model.target[:2]) if model.momentum_encoder
                                   else self.space(model.backbone, model.projector))
            images = Images(self.source, a.res, self.normalize, workers=min(2, a.workers))
            bank = embed_all(enc, images, self.device, progress=progress)
            filled, source = None, "pass"
        t1 = time.perf_counter()
        if a.sepp_center:   # the mean of the rows the bank holds (a train bank: the filled ones)
            bank = center(bank, filled)
        # fp16 on CUDA (fp32 accumulation, fp32 similarities of the winners), fp32 elsewhere
        sims, ids = search_whole_set(bank if bank.is_cuda else bank.float(), k=a.sepp_k,
                                     threshold=a.sepp_threshold, backend=a.sepp_index)
        if filled is not None:   # samples the train bank has not seen yet: neither anchors nor positives
            bad = ~filled[ids.clamp(min=0)] | ~filled[:, None]
            ids, sims = ids.masked_fill(bad, -1), sims.masked_fill(bad, float("-inf"))
        sims, ids, used = keep_top(sims, ids, a.sepp_keep)
        if ids.is_cuda:   # the kernels run asynchronously: wait for them before reading the clock
            torch.cuda.synchronize(ids.device)
        search_s = time.perf_counter() - t1
        self.plan, self.refreshed = PairPlan(ids.cpu().numpy(), a.seed), epoch
        attach(self.loader, self.plan)
        got, agree = label_agreement(np.asarray(self.source.labels), self.plan.plan(epoch)[1])
        valid = (ids >= 0).float().mean().item()
        return {"epoch": epoch, "refresh_s": time.perf_counter() - t0, "search_s": search_s, "paired": got,
                "label_agreement": agree, "dim": bank.shape[1], "bank": source,
                "candidates_above_threshold": valid, "threshold_used": max(used, a.sepp_threshold),
                "mean_sim": sims[ids >= 0].mean().item() if valid else 0.0}

    def epoch_start(self, run, epoch: int):
        """A refresh when due (its cost said against the last epoch), then the epoch's partners."""
        a = self.args
        if self.due(epoch):
            info = self.refresh(epoch, run.model, progress=run.main_rank and not a.no_progress)
            # what the refresh costs against the training it serves (a fixed CSV header: empty before epoch 1)
            info["of_epoch"] = info["refresh_s"] / run.last_epoch_s if run.last_epoch_s else ""
            info["of_epoch_amortized"] = info["of_epoch"] / a.sepp_every if run.last_epoch_s else ""
            if run.main_rank:
                run.log.write("sepp", info, epoch)
                cost = (f" = {info['of_epoch']:.1%} of an epoch ({info['of_epoch_amortized']:.1%} per epoch at "
                        f"--sepp-every {a.sepp_every})") if run.last_epoch_s else ""
                print(f"SePP refresh: {info['paired']:.0%} of samples paired, "
                      f"{agreement_words(info['label_agreement'])}, {info['refresh_s']:.1f} s (search "
                      f"{info['search_s']:.1f} s){cost}", flush=True)
        self.start_epoch(epoch)

    def batch_loaded(self, batch):
        self.tag(batch)

    def state_dict(self) -> dict:
        """The pairs (their neighbour table: the plan of every epoch follows from it and the seed), the epoch they
        were mined at, and a --sepp-bank train bank. A pairs file's plan is the file's: not saved."""
        tb = self.train_bank
        return {"refreshed": self.refreshed,
                "neighbours": None if self.plan is None or self.fixed else torch.as_tensor(self.plan.neighbours),
                "train_bank": None if tb is None or tb.bank is None else {"bank": tb.bank.cpu(),
                                                                         "filled": tb.filled.cpu()}}

    def load_state_dict(self, state: dict | None) -> str | None:
        if state is None:
            return ("the checkpoint holds no SePP state (written before SePP saved it): its bank and pairs are mined "
                    "again at the next epoch's start, from the weights there")
        if not state:   # the checkpoint's run had no SePP: mined when due, as a fresh run
            return None
        if state["neighbours"] is not None:
            self.plan, self.refreshed = PairPlan(state["neighbours"].numpy(), self.args.seed), state["refreshed"]
            attach(self.loader, self.plan)
        if state["train_bank"] is not None and self.train_bank is not None:
            self.train_bank.bank = state["train_bank"]["bank"].to(self.device)
            self.train_bank.filled = state["train_bank"]["filled"].to(self.device)
        return None

    def start_epoch(self, epoch: int):
        self.partner = None
        if self.plan is not None:
            self.partner = torch.as_tensor(self.plan.plan(epoch)[1], device=self.device)

    def tag(self, batch):
        if self.partner is not None:
            batch.pos = self.partner[batch.index]
        return batch
