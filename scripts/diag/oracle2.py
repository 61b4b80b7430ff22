"""The same 12 questions with the caption as plain text before the question (no image): can frozen
SmolLM2-135M-Instruct copy a colour from its context at all? Run: ``.venv/bin/python scripts/diag/oracle2.py``.
"""
import torch, numpy as np
torch.set_num_threads(1)
from plvm.models.mini import build_llava_mini
from plvm.injection import PersonalizedLVLM
from plvm.conversation import Conversation
from plvm.synth.avatarworld import AvatarWorld
model, proc = build_llava_mini(projector=None, lora=False)
lv=PersonalizedLVLM(model, proc, base_model="plvm/llava-mini")
w=AvatarWorld(seed=0); rng=np.random.default_rng(3)
tok=proc.tokenizer
cands=["Red","Blue","Green","Yellow","Purple","Orange","Black","White","Pink","Brown","Grey","Teal"]
cid=[tok.encode(c,add_special_tokens=False)[0] for c in cands]
hits=0; n=0
for i in range(12):
    sc=w.sample_scene(rng,"test", n_people=1); p=sc.graph["people"][0]
    cap=f"A person wearing a {p['clothing_color']} {p['clothing_type']}, {p['expression']}."
    conv=Conversation(); conv.user(cap+" What color is the person wearing?")
    b,none=lv.prepare([conv])
    with torch.no_grad():
        h,_=lv.hidden_states(b,none); lg=lv.logits_from_hidden(h[0,-1],none)
    pred=cands[int(lg[cid].argmax())]; hits+=pred.lower()==p['clothing_color']; n+=1
    print(p['clothing_color'], pred, repr(tok.decode(lg.topk(3).indices)))
print("text acc", hits/n)
