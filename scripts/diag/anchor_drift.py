"""How much of the stage-0 word anchoring survives stage 1? Held-out anchor cosine (plvm.training.anchor's
target: normalised mean embedding of the patch's words) of a checkpoint's projector on 96 fresh train
scenes. Run: ``.venv/bin/python scripts/diag/anchor_drift.py runs/<run>/checkpoint-000300``.
"""
import math
import sys

import numpy as np
import torch
from safetensors.torch import load_file

from plvm.models.mini import build_llava_mini
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.anchor import WordTargets, anchor_loss, patch_words

torch.set_num_threads(1)
model, proc = build_llava_mini(projector=None, lora=False)
state = load_file(sys.argv[1] + "/trainable.safetensors")
proj = {k[len("multi_modal_projector."):]: v for k, v in state.items() if k.startswith("multi_modal_projector.")}
model.model.multi_modal_projector.load_state_dict(proj)
world = AvatarWorld(seed=0)
rng = np.random.default_rng(99)
scenes = [world.sample_scene(rng, "train") for _ in range(96)]
pixels = proc.image_processor([s.image for s in scenes], return_tensors="pt")["pixel_values"]
words = WordTargets(proc.tokenizer, model.get_input_embeddings().weight)
with torch.no_grad():
    feats = torch.cat([torch.stack(list(model.model.get_image_features(
        pixel_values=pixels[i:i + 32], vision_feature_layer=-1, vision_feature_select_strategy="default").pooler_output))
        for i in range(0, 96, 32)])
grid = int(math.isqrt(feats.shape[1]))
targets = torch.stack([torch.stack([words(w) for w in patch_words(s.graph, grid)]) for s in scenes])
print(sys.argv[1], "anchor cosine", round(1 - float(anchor_loss(feats, targets)), 4))
