"""Zero-shot open-VQA of LLaVA-mini after stage 0 only (fresh calibrated projector, anchored on 800 scenes for
300 steps, frozen SmolLM2, no stage 1, no LoRA): ``evaluate_base(n_open=N)`` on held-out identities.

Run: ``.venv/bin/python scripts/diag/anchor_zero_shot.py [person|parts] [N]`` (defaults ``person 60``);
``parts`` anchors head patches to hair/face words and body patches to clothing words (``patch_words``).
"""
import json
import sys

import numpy as np
import torch

from plvm.injection import PersonalizedLVLM
from plvm.models.base_eval import evaluate_base
from plvm.models.mini import build_llava_mini, calibrate_projector
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.anchor import train_anchor

torch.set_num_threads(2)
regions = sys.argv[1] if len(sys.argv) > 1 else "person"
n_open = int(sys.argv[2]) if len(sys.argv) > 2 else 60
model, proc = build_llava_mini(projector=None, lora=False)
w = AvatarWorld(seed=0)
rng = np.random.default_rng([0, 10**6])
imgs = [w.sample_scene(rng, "train").image for _ in range(16)]
print(calibrate_projector(model, proc.image_processor(imgs, return_tensors="pt")["pixel_values"]))
st = train_anchor(model, proc.tokenizer, proc.image_processor, lambda r: w.sample_scene(r, "train"),
                  n_images=800, steps=300, regions=regions)
print(json.dumps(st))
lv = PersonalizedLVLM(model, proc, base_model="plvm/llava-mini")
r = evaluate_base(lv, w, n_vqa=0, n_same=0, n_open=n_open)
print(json.dumps({"regions": regions, "open_accuracy": r.open_accuracy, "open_chance": r.open_chance,
                  "by_kind": {k: (round(v["accuracy"], 3), v["n"]) for k, v in r.open_by_kind.items()},
                  "seconds": r.seconds}))
