"""Linear probes on DINOv2-S features of AvatarWorld scenes (does the vision tower see the properties?).

700 training scenes (world seed 0); mean- and max-pooled patch tokens of blocks 4/8/10/11/12; a linear
classifier (Adam, 400 full-batch steps, 70/30 split) for clothing colour (single-person scenes), people
count and expression. Run: ``.venv/bin/python scripts/diag/probe.py`` (~2 min on 2 cores).
"""
import torch, numpy as np
torch.set_num_threads(2)
from plvm.models.mini import build_llava_mini
from plvm.synth.avatarworld import AvatarWorld
model, proc = build_llava_mini(projector=None)
w=AvatarWorld(seed=0); rng=np.random.default_rng(0)
imgs=[];col=[];cnt=[];expr=[]
while len(imgs)<700:
    sc=w.sample_scene(rng,"train"); ppl=sc.graph["people"]
    imgs.append(sc.image); cnt.append(len(ppl))
    col.append(ppl[0]["clothing_color"] if len(ppl)==1 else None); expr.append(ppl[0]["expression"] if len(ppl)==1 else None)
pv=proc.image_processor(imgs, return_tensors="pt")["pixel_values"]
HS=[]
with torch.no_grad():
    for b in range(0,len(imgs),25):
        o=model.model.vision_tower(pv[b:b+25], output_hidden_states=True)
        HS.append(torch.stack([h[:,1:] for h in o.hidden_states]))  # [13,B,144,384]
HS=torch.cat(HS,1)
print("done feats", HS.shape, "single", sum(c is not None for c in col))
def probe(Z, labels):
    idx=[i for i,l in enumerate(labels) if l is not None]; Z=Z[idx]; labs=sorted(set(labels[i] for i in idx)); y=torch.tensor([labs.index(labels[i]) for i in idx])
    Z=(Z-Z.mean(0))/(Z.std(0)+1e-6); n=len(Z); tr=int(n*0.7)
    W=torch.zeros(Z.shape[1],len(labs),requires_grad=True); b=torch.zeros(len(labs),requires_grad=True); opt=torch.optim.Adam([W,b],lr=1e-2)
    for _ in range(400):
        opt.zero_grad(); l=torch.nn.functional.cross_entropy(Z[:tr]@W+b,y[:tr])+1e-2*W.pow(2).sum(); l.backward(); opt.step()
    return round(((Z[tr:]@W+b).argmax(1)==y[tr:]).float().mean().item(),3), round(1/len(labs),3)
for layer in (4,8,10,11,12):
    F=HS[layer]
    mean=F.mean(1); mx=F.amax(1)
    print("layer",layer,"colour mean/max",probe(mean,col),probe(mx,col),"count",probe(mean,cnt),"expr",probe(mean,expr), probe(mx,expr))
