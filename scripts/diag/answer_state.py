"""The frozen LM's last hidden state at the answer position of 12 training recognition prompts (committed base
and Aligner, scenes with/without the concept): its norm, the norm of its mean, the norm of what varies between
prompts, per-dimension RMS, and the logits of <sks>, "No" and "Yes" there. Shows why a concept output row
needs conditioning (Aligner.condition_row). Run: ``.venv/bin/python scripts/diag/answer_state.py``."""
import torch, numpy as np
torch.set_num_threads(1)
from plvm.pipeline import PLVM
from plvm.synth.avatarworld import AvatarWorld
from plvm.conversation import single_turn
p = PLVM.from_preset("mini")
lv = p.lvlm
w = AvatarWorld(seed=0)
rng = np.random.default_rng(5)
people = w.split("train")
H=[]; L=[]
for i in range(12):
    t = people[int(rng.integers(len(people)))]
    c = p.make_concept("sks", w.render_reference(t))
    scene = w.sample_scene(rng, "train", include=[t] if i%2==0 else [], exclude=[] if i%2==0 else [t])
    conv = single_turn("Is <sks> in this photo?", [c], image=scene.image)
    b, tens = lv.prepare([conv])
    with torch.no_grad():
        h,_ = lv.hidden_states(b, tens)
        hl = h[0, b.lengths[0]-1]
        lo = lv.logits_from_hidden(hl[None], tens)[0]
    H.append(hl); L.append((float(lo[lv.vocab_size]), float(lo[lv.no_ids].max()), float(lo[lv.yes_ids].max()), float(lo[:lv.vocab_size].max())))
    if i==0: print("e_weight norm", float(c.e_weight.norm()), "embedding norm mean", float(lv.model.get_output_embeddings().weight.norm(dim=1).mean()))
H=torch.stack(H)
print("h norm", H.norm(dim=1).mean().item(), "mean-vector norm", H.mean(0).norm().item(), "residual std norm", (H-H.mean(0)).norm(dim=1).mean().item())
rms = H.pow(2).mean(0).sqrt(); print("per-dim rms: max", rms.max().item(), "median", rms.median().item(), "top5", rms.topk(5).values.tolist())
for l in L: print("sks %.1f  No %.1f  Yes %.1f  max %.1f" % l)
