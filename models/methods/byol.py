"""BYOL (Grill et al. 2020): online projector + predictor regress the target network's projection."""
from __future__ import annotations

from models.heads import mlp
from models.losses import byol_regression
from models.methods.base import Method, mix_regression, regression_loss


class BYOL(Method):
    momentum_encoder = True
    cosine_momentum = True    # the target's momentum rises from ema to 1 along a cosine (eq. in section 3.2)
    sepp_term = True
    sync_bn = True            # the paper uses global BN over 4096 images
    recipe = "byol"           # asymmetric views (blur 1.0 / 0.1, solarize 0 / 0.2)

    def __init__(self, proj_hidden=4096, proj_dim=256, pred_hidden=4096, **kw):
        super().__init__(**kw)
        self.projector = mlp(self.feat_dim, proj_hidden, proj_dim, 2)
        self.predictor = mlp(proj_dim, pred_hidden, proj_dim, 2)
        self.target = self.make_target(self.backbone, self.projector)

    def online_target_pairs(self):
        return [(self.backbone, self.target[0]), (self.projector, self.target[1])]

    def embed(self, views):
        return (self.encode_views(views, self.backbone, self.projector, self.predictor),
                self.encode_views(views, self.target[0], self.target[1]))

    def loss(self, e, ids, pos):
        # eq. 2 + symmetrization: L = L(p1, z2') + L(p2, z1'); SePP: predict the positive's target too
        return regression_loss(self, *e, ids, pos, byol_regression, 1.0)

    def online(self, x):
        return self.predictor(self.projector(self.backbone(x)))

    def mix_term(self, e, pm, ids, mix):   # targets from the target network's second view
        return mix_regression(pm, e[1][1], mix.lam, mix.partner, byol_regression)
