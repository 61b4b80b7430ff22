"""Does a stage-1 checkpoint use the image? Answer loss of 24 held-out 8-turn visual-QA dialogues (test
identities, sample seed 777) with their own images vs with every image swapped for the next dialogue's.
A model that reads the image has real < shuffled.
Run: ``.venv/bin/python scripts/diag/shuffle.py runs/<stage-1 run>/checkpoint-000100``.
"""
import sys, tempfile, torch, numpy as np
from pathlib import Path
torch.set_num_threads(1)
from plvm.models.mini import export_stage1, build_llava_mini
from plvm.injection import PersonalizedLVLM, ConceptTensors
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.data import AvatarWorldGenericSource
from plvm.training.stage1_task import generic_conversation, GenericExample
from plvm.training.loss import shift_targets
import torch.nn.functional as F
ck=sys.argv[1]
tmp=tempfile.mkdtemp(); proj,_=export_stage1(ck, Path(tmp)/"projector.safetensors")
model, proc = build_llava_mini(projector=proj)
lv=PersonalizedLVLM(model, proc, base_model="plvm/llava-mini")
w=AvatarWorld(seed=0)
src=AvatarWorldGenericSource(w, seed=777, split="test", mix=(0,1,0), turns=8)
exs=src.examples(0, 24)
def loss(exs):
    tot=0; n=0
    for ex in exs:
        b=lv.collate([lv.encode(generic_conversation(ex), label_all_turns=True)])
        none=ConceptTensors.stack([[]], lv.hidden_size)
        with torch.no_grad():
            h,_=lv.hidden_states(b,none); hh,t,_,r=shift_targets(h,b.labels,b.answer_word)
            ce=F.cross_entropy(lv.logits_for_rows(hh,r,none).float(),t,reduction="sum")
        tot+=ce.item(); n+=len(t)
    return tot/n
real=loss(exs)
shuf=[GenericExample(exs[(i+1)%len(exs)].images, e.question, e.answer, e.kind, e.follow_up) for i,e in enumerate(exs)]
print(ck, "real", round(real,4), "shuffled", round(loss(shuf),4))
