"""Stable Diffusion + IP-Adapter (face variant), conditioned on a reference face, with one seed per image.

Full size (PLVM §3.3)::

    gen = IPAdapterGenerator.load(IPAdapterSpec(
        model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        ip_adapter="h94/IP-Adapter", subfolder="models",
        weight_name="ip-adapter-plus-face_sd15.safetensors"))       # image encoder: models/image_encoder
    images = gen.generate([GenerationJob(ref, "A person is jogging in a city park.", seed=123), ...])

Batching: the images of one reference are made in batches (default 5 = all of them). diffusers' SD pipeline
repeats the IP-Adapter features over the batch, so a batch holds one reference; we encode it ourselves (once,
cached) and pass ``ip_adapter_image_embeds``. Every row has its own ``torch.Generator`` seeded with the row's
seed (CPU generators, as diffusers recommends for reproducibility across devices), so an image depends on its
``(reference, prompt, seed)`` and not on the other prompts of its batch (up to floating-point batching effects).

Any IP-Adapter that ``diffusers`` loads from an image encoder works (``ip-adapter_sd15``,
``ip-adapter-plus_sd15``, ``ip-adapter-plus-face_sd15``, ``ip-adapter-full-face_sd15``). The FaceID variants
(conditioned on insightface embeddings, not on CLIP image features) are not supported here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from PIL import Image

from ..prompts_bank import DEFAULT_NEGATIVE, DEFAULT_STYLE

logger = logging.getLogger(__name__)

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_IP_ADAPTER = "h94/IP-Adapter"
DEFAULT_IP_SUBFOLDER = "models"
DEFAULT_IP_WEIGHT = "ip-adapter-plus-face_sd15.safetensors"


def diffusers_available() -> tuple[bool, str]:
    """``(True, version)`` or ``(False, reason)``."""
    try:
        import diffusers
    except Exception as exc:  # pragma: no cover - depends on the install
        return False, f"diffusers cannot be imported: {exc!r}"
    return True, diffusers.__version__


@dataclass(frozen=True)
class IPAdapterSpec:
    """Where the Stable Diffusion pipeline and the IP-Adapter weights come from (hub ids or local dirs)."""

    model: str = DEFAULT_SD_MODEL
    ip_adapter: str = DEFAULT_IP_ADAPTER
    subfolder: str = DEFAULT_IP_SUBFOLDER
    weight_name: str = DEFAULT_IP_WEIGHT
    image_encoder_folder: str = "image_encoder"


@dataclass(frozen=True)
class GenerationConfig:
    steps: int = 30
    guidance_scale: float = 7.5
    ip_adapter_scale: float = 0.6
    height: int = 512
    width: int = 512
    negative_prompt: str = DEFAULT_NEGATIVE
    style: str = DEFAULT_STYLE
    batch_size: int = 5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GenerationJob:
    """One image to make: the reference, the SD prompt, the seed, and free-form bookkeeping."""

    reference: Image.Image
    prompt: str
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GeneratedImage:
    job: GenerationJob
    image: Image.Image
    nsfw: bool | None = None


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {
        "fp16": torch.float16,
        "float16": torch.float16,
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }[dtype]


class IPAdapterGenerator:
    """A loaded ``StableDiffusionPipeline`` with one IP-Adapter; see the module docstring."""

    def __init__(self, pipe: Any, config: GenerationConfig = GenerationConfig(), spec: IPAdapterSpec | None = None):
        if getattr(pipe.unet, "encoder_hid_proj", None) is None:
            raise ValueError("the pipeline has no IP-Adapter loaded (call pipe.load_ip_adapter first)")
        if getattr(pipe, "image_encoder", None) is None:
            raise ValueError("the pipeline has no IP-Adapter image encoder (FaceID variants are not supported)")
        self.pipe = pipe
        self.config = config
        self.spec = spec
        self._embed_cache: dict[int, tuple[Image.Image, torch.Tensor, torch.Tensor]] = {}
        pipe.set_ip_adapter_scale(config.ip_adapter_scale)
        pipe.set_progress_bar_config(disable=True)

    @classmethod
    def load(
        cls,
        spec: IPAdapterSpec,
        config: GenerationConfig = GenerationConfig(),
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        safety_checker: bool = True,
        local_files_only: bool = False,
        cpu_offload: bool = False,
    ) -> "IPAdapterGenerator":
        """Load the SD pipeline and the IP-Adapter (with its CLIP image encoder) from hub ids or directories."""
        from diffusers import StableDiffusionPipeline

        device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, device)
        kw: dict[str, Any] = {"local_files_only": local_files_only}
        if not safety_checker:
            kw.update(safety_checker=None, requires_safety_checker=False)
        pipe = StableDiffusionPipeline.from_pretrained(spec.model, dtype=torch_dtype, **kw)
        pipe.load_ip_adapter(
            spec.ip_adapter,
            subfolder=spec.subfolder,
            weight_name=spec.weight_name,
            image_encoder_folder=spec.image_encoder_folder,
            local_files_only=local_files_only,
        )
        if cpu_offload and device.startswith("cuda"):
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(device)
        return cls(pipe, config, spec)

    @property
    def device(self) -> torch.device:
        return self.pipe._execution_device

    def _wants_hidden_states(self) -> bool:
        from diffusers.models.embeddings import ImageProjection

        layer = self.pipe.unet.encoder_hid_proj.image_projection_layers[0]
        return not isinstance(layer, ImageProjection)  # Plus / Full variants read the penultimate hidden states

    @torch.no_grad()
    def encode_references(self, references: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """IP-Adapter image features ``(positive, unconditional)``, each ``[B, ...]``, one row per reference.

        Each reference is encoded alone (and cached by object), so its features — and hence its images — do
        not depend on which other references share the batch.
        """
        pos, neg = [], []
        for ref in references:
            hit = self._embed_cache.get(id(ref))
            if hit is None or hit[0] is not ref:
                p, n = self.pipe.encode_image([ref.convert("RGB")], self.device, 1, self._wants_hidden_states())
                hit = (ref, p, n)
                self._embed_cache[id(ref)] = hit
                if len(self._embed_cache) > 64:
                    self._embed_cache.pop(next(iter(self._embed_cache)))
            pos.append(hit[1])
            neg.append(hit[2])
        return torch.cat(pos), torch.cat(neg)

    def _do_cfg(self) -> bool:
        return self.config.guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None

    @torch.no_grad()
    def generate(self, jobs: Sequence[GenerationJob]) -> list[GeneratedImage]:
        """One image per job, in order. Consecutive jobs with the same reference object share a batch (up to
        ``config.batch_size``); the SD pipeline gives every row of a batch the same IP-Adapter features, so a
        batch never mixes references."""
        out: list[GeneratedImage] = []
        bs = max(1, int(self.config.batch_size))
        group: list[GenerationJob] = []
        for job in jobs:
            if group and (job.reference is not group[0].reference or len(group) == bs):
                out += self._generate_batch(group)
                group = []
            group.append(job)
        if group:
            out += self._generate_batch(group)
        return out

    def _generate_batch(self, jobs: list[GenerationJob]) -> list[GeneratedImage]:
        c = self.config
        if any(j.reference is not jobs[0].reference for j in jobs):
            raise ValueError("a batch must share one reference image")
        pos, neg = self.encode_references([jobs[0].reference])  # [1, ...] each
        # diffusers expects [(neg, pos), n_images, ...] per IP-Adapter and repeats it over the batch
        embeds = torch.cat([neg[:, None], pos[:, None]]) if self._do_cfg() else pos[:, None]
        generators = [torch.Generator(device="cpu").manual_seed(int(j.seed)) for j in jobs]
        result = self.pipe(
            prompt=[j.prompt for j in jobs],
            negative_prompt=[c.negative_prompt] * len(jobs) if c.negative_prompt else None,
            ip_adapter_image_embeds=[embeds],
            num_inference_steps=c.steps,
            guidance_scale=c.guidance_scale,
            height=c.height,
            width=c.width,
            generator=generators,
        )
        flags = result.nsfw_content_detected
        return [
            GeneratedImage(job=j, image=img, nsfw=None if flags is None else bool(flags[i]))
            for i, (j, img) in enumerate(zip(jobs, result.images))
        ]

    def describe(self) -> dict[str, Any]:
        import diffusers

        return {
            "spec": asdict(self.spec) if self.spec else None,
            "config": self.config.to_dict(),
            "diffusers": diffusers.__version__,
            "device": str(self.device),
            "dtype": str(self.pipe.unet.dtype),
            "image_projection": type(self.pipe.unet.encoder_hid_proj.image_projection_layers[0]).__name__,
        }

    def close(self) -> None:
        """Drop the pipeline and free accelerator memory."""
        self.pipe = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
