"""What could an Aligner's context tokens give on a frozen LLaVA-mini base? PLVM's prompt ``<bo> is <t1>…<tk>.`` + a
held-out scene + "Is <bo> in this photo?", with ``<t1>…<tk>`` taken from the base's own image tokens of the reference
portrait (no Aligner): ``top`` = the first k of the head box's patches, ``pool`` = the head box's patches average-
pooled to √k × √k, ``mean`` = their mean repeated k times, ``fit`` = the head cropped (square) and shrunk to exactly
√k × √k patches of an otherwise empty image, whose √k × √k tokens are taken unpooled (MARGIN > 1 crops that much
wider around the head). Prints the Yes/No AUC over the twin pairs of ``plvm diag attention-match`` (scene queries
only). Used in experiments/aligner-v2-base.md.

    python experiments/scripts/context_probe.py PROJECTOR K PAIRS [top|pool|mean|fit] [MARGIN]
"""

import math
import sys

import numpy as np
import torch
from PIL import Image

from plvm.concept import ConceptEmbedding
from plvm.config import MINI_BASE_MODEL
from plvm.conversation import single_turn
from plvm.diag.attention_match import AttentionProbeConfig, twin_examples
from plvm.diag.identity_probe import region_weights
from plvm.eval.metrics import roc_auc
from plvm.injection import ConceptTensors, PersonalizedLVLM
from plvm.models.llava_mini.assembly import build_llava_mini, image_tokens
from plvm.training.head_anchor import head_grid_tokens

torch.set_num_threads(1)
proj, k, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
MODE = sys.argv[4] if len(sys.argv) > 4 else "top"
MARGIN = float(sys.argv[5]) if len(sys.argv) > 5 else 1.0
model, processor = build_llava_mini(proj)
lvlm = PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL)
ex = twin_examples(AttentionProbeConfig(pairs=pairs, portrait_share=0.0, seed=0))
emb = model.get_input_embeddings()
word = emb(torch.tensor(processor.tokenizer(" person")["input_ids"][-1:]))[0].detach()
odds = {True: [], False: []}
size = processor.image_processor.crop_size["height"]


def fitted(ref, box, side):
    """``ref``'s head (square crop around ``box``) shrunk to side × side patches in the middle of an empty image."""
    cell = model.config.vision_config.patch_size  # one image token per cell × cell pixels
    grid = size // cell
    x0, y0, x1, y1 = box
    half = MARGIN * max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    background = ref.getpixel((1, 1))
    pad = math.ceil(half)  # a box reaching past the border is filled with the background, not black
    padded = Image.new("RGB", (ref.width + 2 * pad, ref.height + 2 * pad), background)
    padded.paste(ref, (pad, pad))
    crop = padded.crop((round(cx - half) + pad, round(cy - half) + pad, round(cx + half) + pad, round(cy + half) + pad))
    canvas = Image.new("RGB", (size, size), background)
    start = (grid - side) // 2
    canvas.paste(crop.resize((side * cell, side * cell), Image.BICUBIC), (start * cell, start * cell))
    cells = [r * grid + c for r in range(start, start + side) for c in range(start, start + side)]
    return canvas, cells


with torch.no_grad():
    for e in ex:
        ref = e.images[0]
        pv = processor.image_processor([ref], return_tensors="pt")["pixel_values"]
        feats = image_tokens(model, pv)[0]  # [G², d]
        grid = round(feats.shape[0] ** 0.5)
        w = region_weights(e.reference_head, *ref.size, grid)
        if MODE == "fit":
            canvas, cells = fitted(ref, e.reference_head, math.isqrt(k))
            pv = processor.image_processor([canvas], return_tensors="pt")["pixel_values"]
            ctx = image_tokens(model, pv)[0][cells]
        elif MODE == "pool":  # k = s*s adaptive average pool of the head box's cells (what head anchoring fits)
            ctx = head_grid_tokens(feats, e.reference_head, *ref.size, k)
        elif MODE == "mean":
            ctx = ((w[:, None] * feats).sum(0) / w.sum()).expand(k, -1)
        else:
            idx = torch.argsort(w, descending=True)[:k].sort().values
            ctx = feats[idx]
        c = ConceptEmbedding("bo", word, torch.zeros_like(word), ctx, MINI_BASE_MODEL)
        conv = single_turn("Is <bo> in this photo?", [c], image=e.images[-1])
        batch = lvlm.collate([lvlm.encode(conv)])
        tensors = ConceptTensors.stack([[(c.e_word, c.e_weight, c.context)]], lvlm.hidden_size)
        hidden, _ = lvlm.hidden_states(batch, tensors)
        logp = torch.log_softmax(lvlm.logits_from_hidden(hidden[:, -1], tensors).float(), -1)[0]
        odds[e.answer.startswith("Yes")].append(
            float(torch.logsumexp(logp[lvlm.yes_ids], -1) - torch.logsumexp(logp[lvlm.no_ids], -1))
        )
print(
    f"{MODE} k={k} margin={MARGIN} cells(head)={int((w > 0).sum())} AUC {roc_auc(odds[True], odds[False]):.3f} "
    f"mean pos {np.mean(odds[True]):+.2f} neg {np.mean(odds[False]):+.2f}"
)
