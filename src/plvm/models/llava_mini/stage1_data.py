"""LLaVA-mini's stage-1 data: generic (non-personalized) AvatarWorld dialogues, a pure function of
``(seed, batch index)`` like every training source (so resuming is exact)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from plvm.models.llava_mini.anchor import head_box, portrait_head_box
from plvm.models.llava_mini.stage1_task import Box, GenericExample
from plvm.synth import qa
from plvm.synth.samples import iter_generic_samples


class AvatarWorldGenericSource:
    """Generic (non-personalized) AvatarWorld data for LLaVA-mini's stage 1.

    Each example is a caption dialogue, a visual-QA dialogue or a two-image "same person?" question,
    drawn in the proportions ``mix``. With ``turns > 1`` visual-QA dialogues ask up to ``turns`` distinct
    questions about the same scene, so one image's tokens serve several answers — the packing that makes
    CPU training affordable. (Captions stay single-turn: a caption states the answers to the questions.)
    """

    def __init__(
        self,
        world: Any,
        seed: int = 0,
        split: str = "train",
        mix: Sequence[float] = (0.4, 0.4, 0.2),
        turns: int = 1,
        same_portrait_share: float = 0.5,
        described_share: float = 0.0,
        open_kinds: Mapping[str, float] | str | None = None,
        described_properties: Sequence[str] | None = None,
        image_prompt_pairs: bool = False,
    ):
        """``mix``: proportions of caption, generic visual QA and same-person samples;
        ``same_portrait_share``: share of same-person questions whose second image is a portrait (not a scene);
        ``described_share``: share of visual questions that ask whether a described person is in the photo;
        ``open_kinds``: weights of the open question kinds (:func:`plvm.synth.qa.open_kind_weights`, e.g.
        ``"hair_color=3,glasses=1"``; ``None``: uniform); ``described_properties``: what a described-person
        negative may change (``None``: all of :data:`plvm.synth.qa.DESCRIBED_PROPERTIES`);
        ``image_prompt_pairs``: image-prompt questions come as twins that differ only in the query
        (:func:`plvm.synth.samples.image_prompt_pair`; a pair cut by the end of a batch loses its
        negative twin, so use an even batch size)."""
        if turns < 1:
            raise ValueError("turns must be >= 1")
        if not 0.0 <= same_portrait_share <= 1.0:
            raise ValueError(f"same_portrait_share must be in [0, 1], got {same_portrait_share}")
        if not 0.0 <= described_share <= 1.0:
            raise ValueError(f"described_share must be in [0, 1], got {described_share}")
        self.same_portrait_share = float(same_portrait_share)
        self.described_share = float(described_share)
        self.open_kinds = qa.open_kind_weights(open_kinds) if open_kinds is not None else None
        self.described_properties = (
            qa.check_described_properties(described_properties) if described_properties is not None else None
        )
        self.world = world
        self.seed = seed
        self.split = split
        self.mix = tuple(float(x) for x in mix)
        self.turns = int(turns)
        self.image_prompt_pairs = bool(image_prompt_pairs)

    def examples(self, index: int, n: int) -> list[GenericExample]:
        rng = np.random.default_rng([self.seed, index])
        stream = iter_generic_samples(
            self.world,
            rng,
            split=self.split,
            weights=self.mix,
            same_portrait_share=self.same_portrait_share,
            described_share=self.described_share,
            open_kinds=self.open_kinds,
            described_properties=self.described_properties,
            image_prompt_pairs=self.image_prompt_pairs,
        )
        out = []
        for _ in range(n):
            s = next(stream)
            ex = GenericExample(list(s.images), s.question, s.answer, s.kind, name=s.meta.get("name"))
            if s.kind == "image_prompt":
                ex.reference_head, ex.query_heads = self._heads(s)
            if self.turns > 1 and s.kind == "vqa":
                first = s.meta.get("qa", {}).get("meta", {})
                ex.follow_up = self._follow_up(s.graphs[0], {(first.get("visual"), first.get("identity"))}, rng)
            out.append(ex)
        return out

    def _heads(self, sample: Any) -> tuple[Box, list[tuple[Box, bool]]]:
        """An image-prompt sample's reference head box, and every head box of its query image with "is it the
        named person?" (ground truth; :class:`~plvm.models.llava_mini.stage1_task.AttentionMatch`'s targets)."""
        named = sample.meta["identity"]
        reference = portrait_head_box(self.world.identity(named), sample.images[0].width)
        graph = sample.graphs[-1]
        if graph is None:  # the query is a portrait of ``portrait_of``
            shown = self.world.identity(sample.meta["portrait_of"])
            return reference, [(portrait_head_box(shown, sample.images[-1].width), shown.id == named)]
        return reference, [(head_box(p), p["identity"] == named) for p in graph["people"]]

    def _follow_up(
        self, graph: dict[str, Any], asked: set[tuple[Any, Any]], rng: np.random.Generator
    ) -> list[tuple[str, str]]:
        """Up to ``turns - 1`` more questions, each about a property (kind, person) not asked yet — an
        open and a multiple-choice question about the same property would let one answer copy the other."""
        turns: list[tuple[str, str]] = []
        for _ in range(4 * self.turns):  # distinct questions only; a scene may offer fewer
            if len(turns) == self.turns - 1:
                break
            item = qa.generic_vqa(
                graph,
                rng,
                described_share=self.described_share,
                open_kinds=self.open_kinds,
                described_properties=self.described_properties or qa.DESCRIBED_PROPERTIES,
            )
            key = (item.meta.get("visual"), item.meta.get("identity"))
            if key not in asked:
                asked.add(key)
                turns.append((item.prompt, item.answer))
        return turns

    def describe(self) -> dict[str, Any]:
        return {
            "source": "avatarworld-generic",
            "seed": self.seed,
            "world_seed": self.world.seed,
            "split": self.split,
            "mix": list(self.mix),
            "turns": self.turns,
            **({"same_portrait_share": self.same_portrait_share} if self.same_portrait_share != 0.5 else {}),
            **({"described_share": self.described_share} if self.described_share else {}),
            **({"image_prompt_pairs": True} if self.image_prompt_pairs else {}),
            **({"open_kinds": self.open_kinds} if self.open_kinds is not None else {}),
            **(
                {"described_properties": list(self.described_properties)}
                if self.described_properties is not None
                else {}
            ),
        }
