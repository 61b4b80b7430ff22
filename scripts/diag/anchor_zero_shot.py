"""Zero-shot open-VQA of LLaVA-mini after stage 0 only (fresh calibrated projector, anchored on 800 scenes for
300 steps, frozen SmolLM2, no stage 1): evaluate_base(n_open=60). Run: ``.venv/bin/python scripts/diag/anchor_zero_shot.py``.
"""
import torch, numpy as np, json
torch.set_num_threads(1)
from plvm.models.mini import build_llava_mini, calibrate_projector, save_projector
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.anchor import train_anchor
from plvm.injection import PersonalizedLVLM
from plvm.models.base_eval import evaluate_base
model, proc = build_llava_mini(projector=None, lora=False)
w=AvatarWorld(seed=0)
rng=np.random.default_rng([0,10**6])
imgs=[w.sample_scene(rng,"train").image for _ in range(16)]
print(calibrate_projector(model, proc.image_processor(imgs, return_tensors="pt")["pixel_values"]))
st=train_anchor(model, proc.tokenizer, proc.image_processor, lambda r: w.sample_scene(r,"train"), n_images=800, steps=300)
print(st)
save_projector(model, "runs/anchor-try.safetensors")
lv=PersonalizedLVLM(model, proc, base_model="plvm/llava-mini")
r=evaluate_base(lv, w, n_vqa=0, n_same=0, n_open=60)
print(r.open_accuracy, r.open_chance, {k:(round(v['accuracy'],2),v['n']) for k,v in r.open_by_kind.items()})
