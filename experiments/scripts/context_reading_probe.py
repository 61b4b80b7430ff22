"""Can LLaVA-mini v2's LM be taught to read a person from PLVM's 16 context tokens?

PLVM-mini's context is anchored to the base's own image tokens over the reference's head, pooled to 4 × 4
(``plvm.training.head_anchor``), and the LM does not answer attribute questions from it (text QA 0.300 right and
wrong concept). This continues the v2 LM LoRA on PLVM-format questions about *training* identities whose concept is
exactly that: ``<name> is <16 pooled head tokens of a portrait>.`` then a question whose answer is the target (plain
masked-LM loss; the name's embedding is the word " person"):

* text-only: one of the paper's attribute questions (+ our extra ones) about ``<name>``, as multiple choice (the
  letter) or, with ``open``, free (the attribute's sentence, "<name> has blonde hair.");
* visual (share ``VISUAL``): a scene with ``<name>`` in it and a visual multiple-choice question about ``<name>``
  (position, clothing, expression).

Batch 8, 2 threads; experiments/aligner-v2-base.md §15.

    python experiments/scripts/context_reading_probe.py OUT STEPS VISUAL [LR [open]]   # train (resumable)
    python experiments/scripts/context_reading_probe.py eval CHECKPOINT|v2 VISUAL N    # held-out, letters
    python experiments/scripts/context_reading_probe.py eval-open CHECKPOINT|v2 N      # held-out, sentences
"""

import sys
from pathlib import Path

import numpy as np
import torch
from v2_continuation import continued_v2, word_embedding

from plvm.concept import ConceptEmbedding
from plvm.config import MINI_BASE_MODEL
from plvm.conversation import single_turn
from plvm.eval.prompts import mc_prompt
from plvm.eval.scoring import Scorer
from plvm.injection import ConceptTensors
from plvm.models.llava_mini.anchor import portrait_head_box
from plvm.models.llava_mini.stage1_task import GenericExample
from plvm.synth import qa
from plvm.synth.avatarworld import AvatarWorld
from plvm.training.head_anchor import base_head_targets
from plvm.training.loop import LoopConfig, latest_checkpoint, run_training
from plvm.training.loss import shift_targets, weighted_answer_loss

K = 16


class PersonQuestions:
    """Training identities: a portrait (its head box), and a text-only or visual MC question about ``<name>``."""

    def __init__(self, visual_share: float, seed: int = 0, split: str = "train", free: bool = False):
        self.world = AvatarWorld(seed=0, num_identities=400)
        self.pool = self.world.split(split)
        self.split, self.free = split, free
        self.visual_share, self.seed = visual_share, seed

    def examples(self, index, n):
        rng = np.random.default_rng([self.seed, index])
        out = []
        for _ in range(n):
            person = self.pool[int(rng.integers(len(self.pool)))]
            name = f"<{qa.random_concept_name(rng)}>"
            portrait = self.world.render_reference(person, rng_or_seed=int(rng.integers(2**31)))
            if rng.random() < self.visual_share:
                scene = self.world.sample_scene(rng, self.split, include=[person])
                item = qa.visual_mc_qa(scene.graph, rng, target=person.id, name=name)
                images = [portrait, scene.image]
            else:
                item = qa.attribute_mc_qa(person, rng, name=name, extra=True)
                images = [portrait]
            if self.free and "free_answer" in item.meta:  # the attribute's sentence, not a letter
                ex = GenericExample(images, item.question, item.meta["free_answer"], "person_open", name=name)
            else:
                ex = GenericExample(
                    images, mc_prompt(item.question, item.options), item.correct, "person_mc", name=name
                )
            ex.reference_head = portrait_head_box(person, portrait.width)
            out.append(ex)
        return out

    def describe(self):
        return {"source": "person-questions", "visual_share": self.visual_share, "seed": self.seed}


class ReadingTask:
    """The v2 LoRA task with each question asked in PLVM's prompt, the concept's context the portrait's pooled head
    tokens and its word the embedding of " person"."""

    def __init__(self, visual_share: float, checkpoint: Path | None = None, free: bool = False):
        self.lvlm, self.task = continued_v2(PersonQuestions(visual_share, free=free), 8, checkpoint)
        self.word = word_embedding(self.lvlm)

    def __getattr__(self, name):
        return getattr(self.task, name)

    def concepts(self, examples, references=None):
        """One concept per example: the pooled head tokens of its portrait (or of ``references``' portraits)."""
        model, processor = self.lvlm.model, self.lvlm.processor
        with torch.no_grad():
            ctx = base_head_targets(
                model, processor.image_processor, [(e.images[0], e.reference_head) for e in references or examples], K
            )
        return [
            ConceptEmbedding(e.name.strip("<>"), self.word, self.word, c, MINI_BASE_MODEL)
            for e, c in zip(examples, ctx)
        ]

    def loss(self, examples):
        concepts = self.concepts(examples)
        convs = [
            single_turn(e.question, [c], image=e.images[1:] or None, answer=e.answer)
            for e, c in zip(examples, concepts)
        ]
        batch = self.lvlm.collate([self.lvlm.encode(c) for c in convs])
        ct = ConceptTensors.from_concepts([[c] for c in concepts], self.lvlm.hidden_size)
        hidden, _ = self.lvlm.hidden_states(batch, ct)
        h, targets, is_word, rows = shift_targets(hidden, batch.labels, batch.answer_word)
        return weighted_answer_loss(self.lvlm.logits_for_rows(h, rows, ct), targets, is_word, 1.0), {}


@torch.no_grad()
def evaluate(checkpoint: Path | None, visual: float, n: int) -> None:
    """Held-out identities: letter accuracy with the person's own head tokens and with the next example's."""
    task = ReadingTask(visual, checkpoint)
    task.lvlm.model.eval()
    examples = PersonQuestions(visual, seed=7, split="test").examples(0, n)
    scorer = Scorer(task.lvlm)
    for variant, refs in (("right", examples), ("wrong", examples[1:] + examples[:1])):
        concepts = task.concepts(examples, refs)
        convs = [single_turn(e.question, [c], image=e.images[1:] or None) for e, c in zip(examples, concepts)]
        letters = [sorted({line[0] for line in e.question.splitlines() if line[1:3] == ". "}) for e in examples]
        hits = []
        for conv, e, opts in zip(convs, examples, letters):
            scores = scorer.letters([conv], [opts])[0]
            hits.append(max(scores, key=scores.get) == e.answer)
        text = [h for h, e in zip(hits, examples) if len(e.images) == 1]
        vis = [h for h, e in zip(hits, examples) if len(e.images) == 2]
        print(
            f"{variant}: text {np.mean(text):.3f} (n {len(text)})"
            + (f", visual {np.mean(vis):.3f} (n {len(vis)})" if vis else "")
        )


@torch.no_grad()
def evaluate_open(checkpoint: Path | None, n: int) -> None:
    """Held-out identities, text-only: each attribute question's options scored as the full answer sentence
    (``qa.attribute_answer`` of each option's value, summed log-probability); accuracy of the best with the person's
    own head tokens and with the next example's."""
    task = ReadingTask(0.0, checkpoint)
    task.lvlm.model.eval()
    source = PersonQuestions(0.0, seed=7, split="test")
    rng = np.random.default_rng([7, 0])
    examples, candidates, truth = [], [], []
    for e, person in zip(source.examples(0, n), _people(source, n)):
        item = qa.attribute_mc_qa(person, rng, name=e.name, extra=True)
        attribute = item.meta["attribute"]
        values = [v for v in qa.ATTRIBUTES[attribute] if qa.option_text(attribute, v) in item.options.values()]
        sentences = [qa.attribute_answer({**person.attributes, attribute: v}, attribute, e.name) for v in values]
        examples.append(GenericExample(e.images, item.question, "", "person_open", name=e.name))
        examples[-1].reference_head = e.reference_head
        candidates.append(sentences)
        truth.append(values.index(item.meta["value"]))
    for variant, refs in (("right", examples), ("wrong", examples[1:] + examples[:1])):
        concepts = task.concepts(examples, refs)
        hits = []
        for e, c, sentences, t in zip(examples, concepts, candidates, truth):
            convs = [single_turn(e.question, [c], answer=a) for a in sentences]
            batch = task.lvlm.collate([task.lvlm.encode(conv) for conv in convs])
            ct = ConceptTensors.from_concepts([[c]] * len(convs), task.lvlm.hidden_size)
            hidden, _ = task.lvlm.hidden_states(batch, ct)
            h, targets, _, rows = shift_targets(hidden, batch.labels, batch.answer_word)
            logp = torch.log_softmax(task.lvlm.logits_for_rows(h, rows, ct).float(), -1)
            token = logp.gather(-1, targets[:, None])[:, 0]
            scores = torch.zeros(len(convs)).index_add_(0, rows, token)
            hits.append(int(scores.argmax()) == t)
        print(f"{variant}: open text {np.mean(hits):.3f} (n {len(hits)})")


def _people(source: PersonQuestions, n: int):
    """The identities ``source.examples(0, n)`` draws (the same rng calls)."""
    rng = np.random.default_rng([source.seed, 0])
    out = []
    for _ in range(n):
        person = source.pool[int(rng.integers(len(source.pool)))]
        qa.random_concept_name(rng)
        source.world.render_reference(person, rng_or_seed=int(rng.integers(2**31)))
        if rng.random() < source.visual_share:
            raise ValueError("open evaluation is text-only")
        qa.attribute_mc_qa(person, rng, extra=True)
        out.append(person)
    return out


if __name__ == "__main__" and sys.argv[1] == "eval-open":
    torch.set_num_threads(2)
    evaluate_open(Path(sys.argv[2]) if sys.argv[2] != "v2" else None, int(sys.argv[3]))
elif __name__ == "__main__" and sys.argv[1] == "eval":
    torch.set_num_threads(2)
    evaluate(Path(sys.argv[2]) if sys.argv[2] != "v2" else None, float(sys.argv[3]), int(sys.argv[4]))
elif __name__ == "__main__":
    torch.set_num_threads(2)
    out, steps, visual = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    lr = float(sys.argv[4]) if len(sys.argv) > 4 else 3e-4
    free = len(sys.argv) > 5 and sys.argv[5] == "open"
    run_training(
        ReadingTask(visual, free=free),
        LoopConfig(steps=steps, lr=lr, warmup_steps=10, save_every=50, log_every=10, threads=2),
        out,
    )
    print("latest:", latest_checkpoint(out))
