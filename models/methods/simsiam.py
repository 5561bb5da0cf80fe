"""SimSiam (Chen & He 2021): predictor + stop-gradient, no momentum encoder, no negatives."""
from __future__ import annotations

from models.heads import mlp
from models.losses import neg_cosine
from models.methods.base import Method, mix_regression, regression_loss


class SimSiam(Method):
    sepp_term = True

    def __init__(self, proj_hidden=2048, proj_dim=2048, pred_hidden=512, **kw):
        super().__init__(**kw)
        self.projector = mlp(self.feat_dim, proj_hidden, proj_dim, 3, last_bn=True)
        self.predictor = mlp(proj_dim, pred_hidden, proj_dim, 2)

    def embed(self, views):
        z = self.encode_views(views, self.backbone, self.projector)
        return [self.predictor(x) for x in z], z

    def loss(self, e, ids, pos):
        # eq. 2: L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2; SePP: the positive's projection a target too
        return regression_loss(self, *e, ids, pos, neg_cosine, 0.5)

    def online(self, x):
        return self.predictor(self.projector(self.backbone(x)))

    def mix_term(self, e, pm, ids, mix):   # stop-gradient targets of the second view
        return mix_regression(pm, e[1][1], mix.lam, mix.partner, neg_cosine)
