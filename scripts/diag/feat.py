"""Statistics of the DINOv2 last-block patch tokens LLaVA-mini feeds its projector (32 scenes):
mean token norm, norm of the per-channel mean, largest channel means/stds, and the mean cosine between
random tokens before and after per-channel standardisation.
Run: ``.venv/bin/python scripts/diag/feat.py``.
"""
import torch, numpy as np
torch.set_num_threads(1)
from plvm.models.mini import build_llava_mini
from plvm.synth.avatarworld import AvatarWorld
model, proc = build_llava_mini(projector=None)
w=AvatarWorld(seed=0); rng=np.random.default_rng(5)
imgs=[w.sample_scene(rng,"train").image for _ in range(32)]
pv=proc.image_processor(imgs, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    o=model.model.vision_tower(pv, output_hidden_states=True)
F=o.hidden_states[-1][:,1:].reshape(-1,384)
mu=F.mean(0); sd=F.std(0)
print("mean token norm", F.norm(dim=-1).mean().item(), "norm of channel mean", mu.norm().item())
print("top channel |mean|", mu.abs().topk(5).values.tolist(), "top sd", sd.topk(5).values.tolist(), "median sd", sd.median().item())
Fn=torch.nn.functional.normalize(F,dim=-1)
idx=torch.randperm(len(F))[:2000]
print("mean cosine between random tokens raw", (Fn[idx]@Fn[idx].T).mean().item())
Z=(F-mu)/sd; Zn=torch.nn.functional.normalize(Z,dim=-1)
print("mean cosine standardized", (Zn[idx]@Zn[idx].T).mean().item())
emb_norm = model.get_input_embeddings().weight.norm(dim=-1).mean().item()
from plvm.models.mini import init_projector
init_projector(model)
with torch.no_grad():
    proj = model.model.multi_modal_projector(F)
print("word embedding norm", emb_norm, "default-init projector token norm", proj.norm(dim=-1).mean().item())
