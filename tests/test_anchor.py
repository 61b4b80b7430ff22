"""Stage 0 (plvm.training.anchor): patch → word targets from AvatarWorld scene graphs, projector-only training."""

from __future__ import annotations

import numpy as np
import torch

from plvm.models.tiny import tiny_llava
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.anchor import WordTargets, patch_words, person_words, scene_words, train_anchor


def test_patch_words_follow_the_person_boxes():
    world = AvatarWorld(seed=0, num_identities=40)
    rng = np.random.default_rng(3)
    scene = next(s for s in (world.sample_scene(rng, "train") for _ in range(50)) if len(s.graph["people"]) == 2)
    graph = scene.graph
    grid = 12
    words = patch_words(graph, grid)
    assert len(words) == grid * grid
    cell = graph["size"][0] / grid
    for p in graph["people"]:
        x0, y0, x1, y1 = p["bbox"]
        c, r = int((x0 + x1) / 2 // cell), int((y0 + y1) / 2 // cell)
        covering = [q for q in graph["people"] if q["bbox"][0] <= (c + .5) * cell < q["bbox"][2]
                    and q["bbox"][1] <= (r + .5) * cell < q["bbox"][3]]
        front = min(covering, key=lambda q: q.get("depth_rank", 0))
        assert words[r * grid + c] == person_words(front)
        assert p["clothing_color"] in person_words(p) and p["position"] in person_words(p)
    assert words[0] == scene_words(graph) or any(words[0] == person_words(p) for p in graph["people"])
    assert "two" in scene_words(graph)


def test_word_targets_are_unit_means_of_first_token_embeddings():
    _, processor = tiny_llava(template="chatml")
    tok = processor.tokenizer
    emb = torch.randn(len(tok), 8, generator=torch.Generator().manual_seed(0))
    targets = WordTargets(tok, emb)
    t = targets(["red", "hoodie"])
    first = [tok.encode(" " + w, add_special_tokens=False)[0] for w in ("red", "hoodie")]
    expected = torch.nn.functional.normalize(emb[first].mean(0), dim=0)
    assert torch.allclose(t, expected) and abs(t.norm().item() - 1.0) < 1e-5


def test_train_anchor_lowers_the_held_out_loss_and_changes_only_the_projector():
    torch.manual_seed(0)
    model, processor = tiny_llava(template="chatml")
    model.requires_grad_(False)
    world = AvatarWorld(seed=0, num_identities=40)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "multi_modal_projector" not in k}
    stats = train_anchor(model, processor.tokenizer, processor.image_processor,
                         lambda r: world.sample_scene(r, "train"), n_images=60, steps=60, batch_size=16,
                         lr=3e-3, log=lambda s: None)
    assert stats["val_loss_after"] < stats["val_loss_before"] - 0.1, stats
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert not any(p.requires_grad for p in model.parameters())
