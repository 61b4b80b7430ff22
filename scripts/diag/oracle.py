"""Upper bound for "image tokens as words": the image slots of "What color is the person wearing?" are
filled with the *word embeddings* of the true caption ("A person wearing a green t-shirt, smiling.",
repeated) and the frozen SmolLM2 answers; scored over the 12 colour names' first tokens (12 single-person
test scenes). Run: ``.venv/bin/python scripts/diag/oracle.py``.
"""
import torch, numpy as np
torch.set_num_threads(1)
from plvm.models.mini import build_llava_mini
from plvm.injection import PersonalizedLVLM, ConceptTensors
from plvm.conversation import Conversation
from plvm.synth.avatarworld import AvatarWorld
model, proc = build_llava_mini(projector=None, lora=False)
lv=PersonalizedLVLM(model, proc, base_model="plvm/llava-mini")
w=AvatarWorld(seed=0); rng=np.random.default_rng(3)
tok=proc.tokenizer; E=model.get_input_embeddings().weight
hits=0; n=0
for i in range(12):
    sc=w.sample_scene(rng,"test", n_people=1)
    p=sc.graph["people"][0]
    cap=f"A person wearing a {p['clothing_color']} {p['clothing_type']}, {p['expression']}."
    conv=Conversation(); conv.user("What color is the person wearing?", image=sc.image)
    b,none=lv.prepare([conv])
    emb=lv.embed(b,none)
    img_pos=(b.ids[0]==lv.image_token_id).nonzero().flatten()
    ids=tok(cap, add_special_tokens=False).input_ids
    # fill image slots: caption tokens then repeat
    fill=(ids*((len(img_pos)//len(ids))+1))[:len(img_pos)]
    emb2=emb.clone(); emb2[0,img_pos]=E[fill]
    with torch.no_grad():
        out=model.model.language_model(inputs_embeds=emb2, attention_mask=b.attention_mask)
        lg=model.lm_head(out.last_hidden_state[0,-1])
    cands=["Red","Blue","Green","Yellow","Purple","Orange","Black","White","Pink","Brown","Grey","Teal"]
    cid=[tok.encode(c,add_special_tokens=False)[0] for c in cands]
    pred=cands[int(lg[cid].argmax())]
    hits+= pred.lower()==p['clothing_color']; n+=1
    print(p['clothing_color'], pred, tok.decode(lg.topk(3).indices))
print("oracle acc", hits/n)
