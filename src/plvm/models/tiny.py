"""Tiny random-weight LLaVA / LLaVA-OneVision models and processors, built offline.

They have the real HF classes (``LlavaForConditionalGeneration``, ``LlavaOnevisionForConditionalGeneration``,
``LlavaProcessor``, ``LlavaOnevisionProcessor``) with toy sizes, and a small byte-level BPE tokenizer trained
in-process with the ``tokenizers`` library, so the full-scale code path is exercised without any download.
Used by the tests, the benchmarks' smoke runs and as a last-resort model for the product surface.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Dinov2Config,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from ..config import AlignerConfig

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<|im_start|>", "<|im_end|>"]

# The LLaVA-1.5 conversation layout ("USER: <image>\n… ASSISTANT: …</s>"), written for the tiny processor.
LLAVA15_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'][0]['text'] }} "
    "{% elif message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {{ message['content'][0]['text'] }}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# ChatML with image items (the layout of SmolLM2 / Qwen2-based OneVision).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Yes, <sks> is in this photo. No, <sks> is not in this photo.",
    "Is there a person in the image? What is the hair color? The person on the left is smiling.",
    "A man with short black hair wearing a blue hoodie stands next to a woman in a red dress.",
    "Please provide a caption for this image. Can you see them? Who is in this photo?",
    "yes no left right middle top bottom red green blue yellow black white brown blond grey",
    "hello world the a an is are in on of with and or not this that photo picture image person",
]


@lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer with the special tokens LLaVA prompts need."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    return fast


def tiny_dinov2_config(image_size: int = 28, patch_size: int = 14, hidden_size: int = 32) -> Dinov2Config:
    return Dinov2Config(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        layerscale_value=1.0,
    )


def tiny_aligner_config(d_llm: int, base_model: str = "tiny") -> AlignerConfig:
    """The Aligner of the tiny setups: on :func:`tiny_dinov2_config` (28 px, d_enc 32), k = 4, small MLPs."""
    return AlignerConfig(
        encoder="tiny",
        d_enc=32,
        d_llm=d_llm,
        mlp_hidden=64,
        resampler_hidden=32,
        resampler_blocks=1,
        resampler_heads=2,
        num_queries=4,
        image_size=28,
        base_model=base_model,
    )


def tiny_llava(
    template: str = "llava15",
    image_size: int = 28,
    text_hidden: int = 64,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    vision_feature_layer: int | list[int] = -1,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random tiny ``LlavaForConditionalGeneration`` (DINOv2 vision tower, 2-layer Llama) + processor.

    ``template`` chooses the chat layout: ``"llava15"`` (USER:/ASSISTANT:) or ``"chatml"``.
    ``vision_feature_layer``: the tower hidden state(s) the projector reads (of 3: embeddings + 2 blocks);
    a list is concatenated as in HF LLaVA (projector input ``32 × len(list)``), like LLaVA-mini's ``[8, -1]``.
    """
    from transformers import CLIPImageProcessorPil  # PIL backend: no torchvision needed

    tokenizer = tiny_tokenizer()
    vision = tiny_dinov2_config(image_size=image_size)
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA15_STYLE_TEMPLATE if template == "llava15" else CHATML_TEMPLATE,
    )
    return model, processor


def tiny_onevision(seed: int = 0, image_size: int = 28):
    """A random tiny ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Qwen2 LM) + processor."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        Qwen2Config,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tokenizer = tiny_tokenizer()
    vision = SiglipVisionConfig(
        image_size=image_size,
        patch_size=14,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    grid = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<unk>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=grid,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=grid,
        do_pad=True,
    )
    processor = _image_only_onevision_processor_class()(
        image_processor=image_processor,
        tokenizer=tokenizer,
        num_image_tokens=(image_size // 14) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHATML_TEMPLATE,
        vision_aspect_ratio="anyres_max_9",
    )
    return model, processor


@lru_cache(maxsize=1)
def _image_only_onevision_processor_class():
    """``LlavaOnevisionProcessor`` without its video processor.

    transformers 5.23 cannot construct ``LlavaOnevisionProcessor`` when torchvision is absent (its video
    processor base class is not exported), and torchvision cannot be installed beside this torch. Images
    never touch the video processor, so for the offline tests we subclass it with an image-only
    ``__init__``; everything else (token expansion for any-res images, chat template) is the library's own.
    """
    from transformers import LlavaOnevisionProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
        def __init__(
            self,
            image_processor=None,
            tokenizer=None,
            num_image_tokens=None,
            vision_feature_select_strategy=None,
            chat_template=None,
            vision_aspect_ratio="anyres_max_9",
        ):
            self.num_image_tokens = num_image_tokens
            self.vision_feature_select_strategy = vision_feature_select_strategy
            self.image_token = "<image>"
            self.video_token = "<video>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.unk_token_id
            self.vision_aspect_ratio = vision_aspect_ratio
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyLlavaOnevisionProcessor
