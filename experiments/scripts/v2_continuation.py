"""The committed LLaVA-mini v2 with its LM LoRA unmerged and trainable: where every probe that continues v2 starts."""

from pathlib import Path

import torch

from plvm.config import MINI_BASE_MODEL
from plvm.injection import PersonalizedLVLM
from plvm.models.llava_mini.assembly import build_llava_mini, projector_lora
from plvm.models.llava_mini.lora import MiniLoraConfig, load_lora_state_dict, read_lora
from plvm.models.llava_mini.stage1_task import ProjectorTrainingTask
from plvm.training.loop import load_checkpoint

V2 = str(Path(__file__).resolve().parents[2] / "models/llava-mini-v2/projector.safetensors")


def continued_v2(
    source, batch_size: int, checkpoint=None, **task_options
) -> tuple[PersonalizedLVLM, ProjectorTrainingTask]:
    """v2's projector (frozen) and LM LoRA (trainable) on ``source``; optionally a probe's checkpoint loaded.
    ``task_options``: further :class:`ProjectorTrainingTask` arguments (``word_weight``, ``attention_match``)."""
    model, processor = build_llava_mini(V2, lora=False)
    lvlm = PersonalizedLVLM(model, processor, base_model=MINI_BASE_MODEL)
    task = ProjectorTrainingTask(
        lvlm, source, batch_size=batch_size, lora=MiniLoraConfig(), train_projector=False, **task_options
    )
    load_lora_state_dict(task.tuner, read_lora(projector_lora(V2))[0])
    if checkpoint is not None:
        load_checkpoint(Path(checkpoint), task, None)
    return lvlm, task


def word_embedding(lvlm: PersonalizedLVLM, word: str = " person") -> torch.Tensor:
    """``[d]`` input embedding of ``word``'s last token (a concept's stand-in name embedding)."""
    ids = lvlm.processor.tokenizer(word)["input_ids"]
    return lvlm.model.get_input_embeddings().weight[ids[-1]].detach()
