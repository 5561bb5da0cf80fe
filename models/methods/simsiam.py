"""SimSiam (Chen & He 2021): predictor + stop-gradient, no momentum encoder, no negatives."""
from __future__ import annotations

from models.heads import mlp
from models.losses import neg_cosine
from models.methods.base import Method, fp32, mix_regression, with_mix, sepp_regression, with_sepp


class SimSiam(Method):
    def __init__(self, proj_hidden=2048, proj_dim=2048, pred_hidden=512, **kw):
        super().__init__(**kw)
        self.projector = mlp(self.feat_dim, proj_hidden, proj_dim, 3, last_bn=True)
        self.predictor = mlp(proj_dim, pred_hidden, proj_dim, 2)

    def forward(self, batch):
        z = self.encode_views(batch.views, self.backbone, self.projector)
        p = [self.predictor(x) for x in z]
        pm = self.predictor(self.projector(self.backbone(batch.mix.images))) if batch.mix is not None else None
        with fp32(p[0].device.type):
            # eq. 2: L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2
            out = {"loss": 0.5 * (neg_cosine(p[0], z[1]).mean() + neg_cosine(p[1], z[0]).mean())}
            if batch.pos is not None:  # SePP: the semantic positive's stop-gradient projection as a target too
                out = with_sepp(out, self, 0.5 * (sepp_regression(p[0], z[1], batch.index, batch.pos, neg_cosine)
                                                  + sepp_regression(p[1], z[0], batch.index, batch.pos, neg_cosine)))
            if pm is not None:  # BSIM: stop-gradient targets of the second view
                out = with_mix(out, self, mix_regression(pm, z[1], batch.mix.lam, batch.mix.partner, neg_cosine))
        return out
