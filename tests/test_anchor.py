"""Stage 0 (plvm.models.llava_mini.anchor): patch → word targets from AvatarWorld scene graphs, projector-only
training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plvm.models.llava_mini.anchor import patch_words, person_words, scene_words, train_anchor
from plvm.models.tiny import tiny_llava
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.word_anchor import WordTargets


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
        covering = [
            q
            for q in graph["people"]
            if q["bbox"][0] <= (c + 0.5) * cell < q["bbox"][2] and q["bbox"][1] <= (r + 0.5) * cell < q["bbox"][3]
        ]
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
    stats = train_anchor(
        model,
        processor.tokenizer,
        processor.image_processor,
        lambda r: world.sample_scene(r, "train"),
        n_images=60,
        steps=60,
        batch_size=16,
        lr=3e-3,
        log=lambda s: None,
    )
    assert stats["val_loss_after"] < stats["val_loss_before"] - 0.1, stats
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    assert not any(p.requires_grad for p in model.parameters())


def test_parts_regions_bind_hair_words_to_the_head_and_clothing_words_to_the_body():
    from plvm.models.llava_mini.anchor import body_words, head_box, head_words

    world = AvatarWorld(seed=0, num_identities=40)
    rng = np.random.default_rng(4)
    scene = next(s for s in (world.sample_scene(rng, "train") for _ in range(50)) if len(s.graph["people"]) == 1)
    graph, grid = scene.graph, 24
    p = graph["people"][0]
    cell = graph["size"][0] / grid
    words = patch_words(graph, grid, regions="parts")
    assert words != patch_words(graph, grid)  # the default ("person") words every patch of p the same way

    def at(x, y):
        return words[int(y // cell) * grid + int(x // cell)]

    fx0, fy0, fx1, fy1 = p["face_bbox"]
    head = at((fx0 + fx1) / 2, (fy0 + fy1) / 2)
    assert head == head_words(p) and p["attributes"]["hair_color"] in head and "hair" in head
    assert p["clothing_type"] not in head
    bx0, _, bx1, by1 = p["bbox"]
    body = at((bx0 + bx1) / 2, (fy1 + by1) / 2 + cell)  # below the face, inside the person box
    assert body == body_words(p) and p["clothing_color"] in body and "hair" not in body
    hx0, hy0, hx1, hy1 = head_box(p)
    assert hy0 < fy0 and hx0 < fx0 and hx1 > fx1 and hy1 == fy1  # extended over the hair, not below the chin
    with pytest.raises(ValueError, match="regions"):
        patch_words(graph, grid, regions="face")


def test_head_anchor_fits_only_the_resampler_to_the_bases_pooled_head_tokens():
    from PIL import Image
    from transformers import Dinov2Model

    from plvm.aligner import Aligner
    from plvm.models.llava_mini.assembly import vision_features
    from plvm.models.tiny import tiny_aligner_config, tiny_dinov2_config
    from plvm.training.head_anchor import base_head_targets, head_grid_tokens, train_aligner_head_anchor

    model, processor = tiny_llava(template="chatml")
    torch.manual_seed(0)
    config = tiny_aligner_config(model.config.text_config.hidden_size).replace(
        mlp_hidden=48, resampler_hidden=16, resampler_blocks=2
    )
    aligner = Aligner(config, Dinov2Model(tiny_dinov2_config(image_size=28)))
    rng = np.random.default_rng(0)
    samples = [
        (Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)), (0.0, 0.0, 28.0, 14.0)) for _ in range(40)
    ]
    targets = base_head_targets(model, processor.image_processor, samples[:2], k=4)
    pixels = processor.image_processor([samples[0][0]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = model.model.multi_modal_projector(vision_features(model, pixels))[0]
    torch.testing.assert_close(targets[0], head_grid_tokens(tokens, samples[0][1], 28, 28, 4))
    before = {k: v.clone() for k, v in aligner.state_dict().items()}

    def reference_pixels(images):
        return torch.stack([torch.tensor(np.asarray(i), dtype=torch.float32).permute(2, 0, 1) / 255 for i in images])

    stats = train_aligner_head_anchor(
        aligner,
        model,
        processor.image_processor,
        reference_pixels,
        samples,
        steps=60,
        batch_size=8,
        lr=3e-3,
        log=lambda s: None,
    )
    assert stats["loss_after"] < stats["loss_before"] - 0.05, stats
    changed = {k for k, v in aligner.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("resampler.") for k in changed)
