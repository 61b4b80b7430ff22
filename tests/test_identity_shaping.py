"""Identity shaping (plvm.models.llava_mini.identity_shaping): widening keeps the map, the SupCon loss, the
standardise / fold-back round trip, and a shaping run that makes a hidden identity code the tokens' own geometry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from plvm.diag.identity_probe import reid_scores
from plvm.models.llava_mini.identity_shaping import (
    SHAPED_ATTRIBUTES,
    IdentityShapingConfig,
    TowerFeatures,
    shape_projector,
    supervised_contrastive,
    widen_projector,
)


class Projector(nn.Module):
    """LLaVA's projector layout (linear_1 → GELU → linear_2)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear_1, self.act, self.linear_2 = nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


def _model(projector: nn.Module):
    return SimpleNamespace(model=SimpleNamespace(multi_modal_projector=projector))


def test_widened_projector_computes_the_old_map():
    torch.manual_seed(0)
    old = Projector(8, 16)
    state = widen_projector(dict(old.state_dict()), 8, -1, [3, -1], n_states=5)
    assert state["linear_1.weight"].shape == (16, 16)
    wide = Projector(16, 16)
    wide.load_state_dict(state)
    x_other, x_last = torch.randn(5, 8), torch.randn(5, 8)
    assert torch.allclose(wide(torch.cat([x_other, x_last], -1)), old(x_last), atol=1e-6)
    assert widen_projector(dict(old.state_dict()), 8, 4, [4, 2], n_states=5)["linear_1.weight"][:, :8].abs().sum() > 0
    with pytest.raises(ValueError, match="not among"):
        widen_projector(dict(old.state_dict()), 8, 2, [3, -1], n_states=5)


def test_supervised_contrastive_by_hand():
    z = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0], [-1.0, -0.1]])
    labels = torch.tensor([0, 0, 1, 1])
    good = supervised_contrastive(z, labels, 0.1)
    bad = supervised_contrastive(z, torch.tensor([0, 1, 0, 1]), 0.1)
    assert float(good) < 0.01 < 1.0 < float(bad)
    # by hand for anchor 0 at tau 1: centred z are the rows themselves (mean 0), cosines to the others
    zc = nn.functional.normalize(z, dim=-1)
    sims = zc[0] @ zc[1:].T
    expected0 = -(sims[0] - torch.logsumexp(sims, 0))
    full = supervised_contrastive(z, labels, 1.0)
    per_anchor = []
    for i in range(4):
        others = [j for j in range(4) if j != i]
        s = zc[i] @ zc[others].T
        pos = [k for k, j in enumerate(others) if labels[j] == labels[i]]
        per_anchor.append(-(s[pos] - torch.logsumexp(s, 0)).mean())
    assert torch.isclose(per_anchor[0], expected0)
    assert torch.isclose(full, torch.stack(per_anchor).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        supervised_contrastive(z, torch.tensor([0, 1, 2, 2]), 0.1)


def _synthetic_cache(n_ids: int = 12, scenes: int = 3, patches: int = 4, d: int = 12, seed: int = 0) -> TowerFeatures:
    """Identity hides in 2 low-variance channels of each head patch; a large common offset and strong per-image
    nuisance in the rest (as DINOv2's features have); person = patch 0 (weight 1)."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randn(n_ids, 2, generator=gen)
    feats, ident, is_ref = [], [], []
    for k in range(n_ids):
        for j in range(1 + scenes):
            x = 10.0 + 3.0 * torch.randn(patches, d, generator=gen)
            x[0, :2] = 10.0 + 0.3 * codes[k] + 0.01 * torch.randn(2, generator=gen)
            feats.append(x)
            ident.append(f"id{k}")
            is_ref.append(j == 0)
    n = len(feats)
    weights = torch.zeros(n, patches)
    weights[:, 0] = 1.0
    labels = {a: torch.tensor([int(i[2:]) % 2 for i in ident]) for a in SHAPED_ATTRIBUTES}
    return TowerFeatures(torch.stack(feats).half(), weights, torch.arange(n), ident, is_ref, labels)


def _pooled(projector: nn.Module, cache: TowerFeatures) -> torch.Tensor:
    with torch.no_grad():
        return torch.einsum("np,npd->nd", cache.weights, projector(cache.features.float()))


def test_distillation_alone_keeps_the_map_through_the_standardisation_fold():
    torch.manual_seed(0)
    cache = _synthetic_cache()
    projector = Projector(12, 16)
    before = projector(cache.features.float()).detach()
    config = IdentityShapingConfig(
        steps=3, identities=2, ids_per_batch=4, identity_weight=0.0, attribute_weight=0.0, lr=1e-4
    )
    stats = shape_projector(_model(projector), cache, config, log=lambda s: None)
    assert stats["step"] == 3 and stats["distill"] < 1e-6
    after = projector(cache.features.float()).detach()
    assert torch.allclose(after, before, atol=2e-3 * float(before.abs().max()))


@pytest.mark.slow
def test_shaping_makes_identity_the_tokens_own_geometry():
    torch.manual_seed(0)
    cache = _synthetic_cache()
    projector = Projector(12, 16)
    refs = [i for i, r in enumerate(cache.is_reference) if r]
    qry = [i for i, r in enumerate(cache.is_reference) if not r]

    def auc() -> float:
        z = _pooled(projector, cache)
        z = z - z.mean(0)
        return reid_scores(z[qry], [cache.identity[i] for i in qry], z[refs], [cache.identity[i] for i in refs])["auc"]

    start = auc()
    config = IdentityShapingConfig(steps=150, identities=2, ids_per_batch=6, identity_weight=1.0, lr=3e-3)
    logs: list[str] = []
    stats = shape_projector(_model(projector), cache, config, log=logs.append, log_every=50)
    assert len(logs) == 3 and "contrast" in logs[-1]
    assert start < 0.7 and auc() > start + 0.2
    assert stats["step"] == 150 and stats["distill"] > 0  # the code moved the tokens away from the old map


def test_widens_is_the_one_rule_for_which_projectors_widen():
    from plvm.models.llava_mini.assembly import widens

    assert widens(-1, [8, -1]) and widens(12, [8, -1])  # -1 and 12 are one DINOv2-S layer
    assert not widens(-1, -1) and not widens(3, [8, -1]) and not widens([8, -1], [8, -1, 4]) and not widens(-1, None)
    assert widens(-1, [0, -1], n_states=3) and not widens(1, [0, -1], n_states=3)
