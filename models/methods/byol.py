"""BYOL (Grill et al. 2020): online projector + predictor regress the target network's projection."""
from __future__ import annotations

from models.heads import mlp
from models.losses import byol_regression
from models.methods.base import Method, fp32, mix_regression, sepp_regression, with_mix, with_sepp


class BYOL(Method):
    momentum_encoder = True
    sync_bn = True            # the paper uses global BN over 4096 images
    recipe = "byol"           # asymmetric views (blur 1.0 / 0.1, solarize 0 / 0.2)

    def __init__(self, proj_hidden=4096, proj_dim=256, pred_hidden=4096, **kw):
        super().__init__(**kw)
        self.projector = mlp(self.feat_dim, proj_hidden, proj_dim, 2)
        self.predictor = mlp(proj_dim, pred_hidden, proj_dim, 2)
        self.target = self.make_target(self.backbone, self.projector)

    def online_target_pairs(self):
        return [(self.backbone, self.target[0]), (self.projector, self.target[1])]

    def forward(self, batch):
        p = self.encode_views(batch.views, self.backbone, self.projector, self.predictor)
        z = self.encode_views(batch.views, self.target[0], self.target[1])
        pm = self.predictor(self.projector(self.backbone(batch.mix.images))) if batch.mix is not None else None
        with fp32(p[0].device.type):
            # eq. 2 + symmetrization: L = L(p1, z2') + L(p2, z1')
            out = {"loss": byol_regression(p[0], z[1]).mean() + byol_regression(p[1], z[0]).mean()}
            if batch.pos is not None:  # SePP: predict the semantic positive's target too (both views)
                out = with_sepp(out, self, sepp_regression(p[0], z[1], batch.index, batch.pos, byol_regression)
                                + sepp_regression(p[1], z[0], batch.index, batch.pos, byol_regression))
            if pm is not None:  # BSIM: targets from the target network's second view
                out = with_mix(out, self, mix_regression(pm, z[1], batch.mix.lam, batch.mix.partner, byol_regression))
        return out
