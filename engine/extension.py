"""Add-ons of the training loop as small objects bound to a few named events (as Composer's algorithms): the
loop calls every extension at each event and names none of them, so a new add-on is one new class (with its flags)
in extensions.py, and the loop does not change. SePP (mining/sepp.py) and BSIM (loaders/mix.py) are two.

What an add-on may give a method is declared once, by models/methods/base.Method: extra positives (Batch.pos, a
sample id per sample, which every method's loss accepts) and loss terms of its own (embed + terms below, run
inside the method's forward, so under DDP and torch.compile with the rest of it)."""
from __future__ import annotations


class Extension:
    """Every event is a no-op unless the extension says otherwise.

    epoch_start(run, epoch)        before the loader's epoch begins (SePP: a refresh when due, the epoch's pairs)
    batch_loaded(batch)            a batch off the loader, before the step (SePP: each sample's positive)
    before_forward(batch, it)      inside the step, before the forward (engine/step.py)
    embed(method, batch)           inside the method's forward, under autocast, after the views' embeddings: the
                                   extra forward passes its terms need (BSIM: the mixtures'); -> anything, given back
                                   to terms
    terms(method, e, extra, batch) inside the forward, in float32: {name: (term, weight)}, each added to the loss as
                                   weight * term and logged under name; e: the method's own embeddings (prepare's)
    after_forward(batch, out, it)  inside the step, after the forward; it may change out['loss']
    log_keys                       loss terms of the forward's output that the training log carries
    state_dict() / load_state_dict(state)   what the extension keeps between steps (SePP: its pairs, its bank, the
                                   epoch of its last refresh), saved in every checkpoint under the class's name;
                                   load_state_dict gets None from a checkpoint without it and returns a note
                                   saying what is rebuilt (or None)
    """
    log_keys: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict | None) -> str | None:
        return None

    def epoch_start(self, run, epoch: int):
        pass

    def batch_loaded(self, batch):
        pass

    def before_forward(self, batch, it: int):
        pass

    def embed(self, method, batch):
        return None

    def terms(self, method, e, extra, batch) -> dict:
        return {}

    def after_forward(self, batch, out: dict, it: int):
        pass


def adds_terms(hook) -> bool:
    """Whether a step hook brings loss terms of its own (an Extension that overrides terms)."""
    return isinstance(hook, Extension) and type(hook).terms is not Extension.terms
