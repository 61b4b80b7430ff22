"""``plvm synth ipadapter``: PLVM §3.3 training data from a folder of faces (SD + IP-Adapter, filters, QA).

See docs/SYNTHESIS.md.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any, Optional

import typer

from plvm.cli.common import fail
from plvm.synth.filters import CLIP_THRESHOLD, DEFAULT_CLIP_MODEL, FACE_LICENCES, FACE_THRESHOLD
from plvm.synth.ipadapter.training_items import DEFAULT_ATTRIBUTE_INSTRUCTION
from plvm.synth.prompts_bank import DEFAULT_N_PROMPTS, DEFAULT_NEGATIVE, DEFAULT_PER_REFERENCE, DEFAULT_STYLE

app = typer.Typer(
    help="PLVM §3.3 data synthesis with Stable Diffusion + IP-Adapter.", no_args_is_help=True, add_completion=False
)

DEFAULT_LVLM = "llava-hf/llava-1.5-7b-hf"


class FaceBackend(str, enum.Enum):
    dlib = "dlib"
    insightface = "insightface"
    pixels = "pixels"
    none = "none"


@app.callback()
def _synth() -> None:
    """Synthetic training data (IP-Adapter)."""


@app.command("ipadapter")
def ipadapter(
    refs: Path = typer.Option(
        ..., "--refs", help="Folder of reference face images (CelebA-HQ layout: 0.jpg, 1.jpg, …)."
    ),
    out: Path = typer.Option(..., "--out", help="Output training folder (train.json + <ID>/…); resumable."),
    model: Optional[str] = typer.Option(
        None,
        "--model",
        help="Stable Diffusion 1.5 pipeline: hub id or directory "
        "(default: stable-diffusion-v1-5/stable-diffusion-v1-5).",
    ),
    ip_adapter: Optional[str] = typer.Option(
        None, "--ip-adapter", help="IP-Adapter repo id or directory (default: h94/IP-Adapter)."
    ),
    ip_subfolder: Optional[str] = typer.Option(None, "--ip-subfolder", help="(default: models)"),
    ip_weight: Optional[str] = typer.Option(
        None, "--ip-weight", help="(default: ip-adapter-plus-face_sd15.safetensors)"
    ),
    image_encoder_folder: str = typer.Option(
        "image_encoder", "--image-encoder-folder", help="IP-Adapter image encoder, relative to --ip-subfolder."
    ),
    ip_scale: float = typer.Option(0.6, "--ip-scale", help="IP-Adapter scale (identity strength)."),
    images_per_ref: int = typer.Option(DEFAULT_PER_REFERENCE, "--images-per-ref", help="Images per reference face."),
    n_prompts: int = typer.Option(DEFAULT_N_PROMPTS, "--n-prompts", help="Size of the scene-prompt bank."),
    prompt_seed: int = typer.Option(0, "--prompt-seed", help="Seed of the prompt bank and per-reference draws."),
    seed: int = typer.Option(0, "--seed", help="Base seed of the per-image seeds."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps (default: 30; --tiny: 2)."),
    guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
    height: Optional[int] = typer.Option(None, "--height", help="(default: 512; --tiny: 32)"),
    width: Optional[int] = typer.Option(None, "--width", help="(default: 512; --tiny: 32)"),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", help="Images per diffusion batch, all of one reference (default: --images-per-ref)."
    ),
    negative_prompt: str = typer.Option(DEFAULT_NEGATIVE, "--negative-prompt"),
    style: str = typer.Option(DEFAULT_STYLE, "--style", help="Words appended to each scene prompt for SD."),
    clip_model: Optional[str] = typer.Option(
        None, "--clip-model", help=f"(default: {DEFAULT_CLIP_MODEL}); 'none' disables the CLIP filter."
    ),
    clip_threshold: Optional[float] = typer.Option(
        None,
        "--clip-threshold",
        help=f"Reject CLIP image–prompt cosine below this (paper: {CLIP_THRESHOLD}; --tiny: -1, i.e. keep all).",
    ),
    face_backend: Optional[FaceBackend] = typer.Option(
        None,
        "--face-backend",
        help="dlib (CC0) | insightface (NON-COMMERCIAL weights, needs "
        "--allow-noncommercial) | pixels (test stand-in) | none "
        "(default: dlib; --tiny: pixels).",
    ),
    allow_noncommercial: bool = typer.Option(
        False, "--allow-noncommercial", help="Allow the insightface ArcFace weights (non-commercial research only)."
    ),
    face_threshold: Optional[float] = typer.Option(
        None, "--face-threshold", help=f"Reject face identity cosine below this (paper: {FACE_THRESHOLD}; --tiny: -1)."
    ),
    lvlm: Optional[str] = typer.Option(
        None,
        "--lvlm",
        help=f"Base LVLM for attribute answers (default: {DEFAULT_LVLM}; --tiny: tiny); 'none' skips attribute QA.",
    ),
    attr_max_new_tokens: int = typer.Option(48, "--attr-max-new-tokens", help="Token budget of each attribute answer."),
    attr_instruction: str = typer.Option(
        DEFAULT_ATTRIBUTE_INSTRUCTION,
        "--attr-instruction",
        help="Appended to each Table 12 question asked to the LVLM.",
    ),
    positive_ratio: float = typer.Option(0.6, "--positive-ratio", help="Share of positives among recognition pairs."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N references."),
    keep_rejected: bool = typer.Option(
        True, "--keep-rejected/--drop-rejected", help="Save rejected images under <ID>/rejected/."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cuda:N | cpu"),
    dtype: str = typer.Option("auto", "--dtype", help="auto (fp16 on GPU) | fp16 | bf16 | fp32"),
    safety_checker: bool = typer.Option(
        True, "--safety-checker/--no-safety-checker", help="Keep SD's safety checker (flagged images are rejected)."
    ),
    cpu_offload: bool = typer.Option(False, "--cpu-offload", help="diffusers model CPU offload (small GPUs)."),
    local_files_only: bool = typer.Option(False, "--local-files-only", help="Never download; use the HF cache/dirs."),
    tiny: bool = typer.Option(
        False,
        "--tiny",
        help="Build and use tiny RANDOM components (tests): the images are noise; thresholds are relaxed unless given.",
    ),
    tiny_dir: Optional[Path] = typer.Option(
        None, "--tiny-dir", help="Where --tiny writes its components (default: OUT/_tiny_components)."
    ),
    tiny_variant: str = typer.Option("plus-face", "--tiny-variant", help="plus-face | full-face"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Generate 5 scene images per reference face with SD + IP-Adapter, filter them (CLIP ≥ 0.2, face ≥ 0.5),
    ask the base LVLM the Table 12 questions about each reference, and write OUT/train.json."""
    from rich.console import Console
    from tqdm import tqdm

    from plvm.synth.ipadapter.generator import (
        DEFAULT_IP_ADAPTER,
        DEFAULT_IP_SUBFOLDER,
        DEFAULT_IP_WEIGHT,
        DEFAULT_SD_MODEL,
        diffusers_available,
    )
    from plvm.synth.ipadapter.run import SettingsMismatch, SynthConfig, run_synthesis

    console = Console(stderr=True, quiet=quiet)
    ok, why = diffusers_available()
    if not ok:
        fail(f"DIFFUSERS IS NOT AVAILABLE: {why}. Install it with `pip install 'plvm[synth]'`.", code=3)

    clip_path = clip_model
    if tiny:
        from plvm.synth.ipadapter.tiny import build_tiny_components

        comps = build_tiny_components(tiny_dir or (out / "_tiny_components"), variant=tiny_variant)
        model = model or str(comps.sd)
        ip_adapter = ip_adapter or str(comps.ip_adapter)
        ip_subfolder = ip_subfolder or comps.ip_subfolder
        ip_weight = ip_weight or comps.ip_weight
        clip_path = clip_path or str(comps.clip)
        face_backend = face_backend or FaceBackend.pixels
        lvlm = lvlm or "tiny"
        steps, height, width = steps or 2, height or comps.image_size, width or comps.image_size
        batch_size = batch_size or 2
        clip_threshold = -1.0 if clip_threshold is None else clip_threshold
        face_threshold = -1.0 if face_threshold is None else face_threshold
        local_files_only = True
        console.print(
            "[bold yellow]TINY MODE[/]: random tiny SD / IP-Adapter / CLIP / LLaVA, pixel stand-in for "
            f"faces, thresholds clip={clip_threshold} face={face_threshold}; the data is NOT usable."
        )
    model = model or DEFAULT_SD_MODEL
    ip_adapter = ip_adapter or DEFAULT_IP_ADAPTER
    ip_subfolder = DEFAULT_IP_SUBFOLDER if ip_subfolder is None else ip_subfolder
    ip_weight = ip_weight or DEFAULT_IP_WEIGHT
    clip_path = clip_path or DEFAULT_CLIP_MODEL
    face_backend = face_backend or FaceBackend.dlib
    lvlm = lvlm or DEFAULT_LVLM
    clip_threshold = CLIP_THRESHOLD if clip_threshold is None else clip_threshold
    face_threshold = FACE_THRESHOLD if face_threshold is None else face_threshold
    if face_backend == FaceBackend.insightface and not allow_noncommercial:
        fail(
            "--face-backend insightface uses ArcFace weights licensed for NON-COMMERCIAL research only; add "
            "--allow-noncommercial to accept that, or use --face-backend dlib (CC0)"
        )

    from plvm.synth.ipadapter.generator import GenerationConfig, IPAdapterSpec

    gen_config = GenerationConfig(
        steps=steps or 30,
        guidance_scale=guidance,
        ip_adapter_scale=ip_scale,
        height=height or 512,
        width=width or 512,
        negative_prompt=negative_prompt,
        style=style,
        batch_size=batch_size or images_per_ref,
    )
    spec = IPAdapterSpec(
        model=model,
        ip_adapter=ip_adapter,
        subfolder=ip_subfolder,
        weight_name=ip_weight,
        image_encoder_folder=image_encoder_folder,
    )
    settings: dict[str, Any] = {
        "model": model,
        "ip_adapter": ip_adapter,
        "ip_subfolder": ip_subfolder,
        "ip_weight": ip_weight,
        **{k: v for k, v in gen_config.to_dict().items() if k != "batch_size"},
        "clip_model": clip_path,
        "clip_threshold": clip_threshold,
        "face_backend": face_backend.value,
        "face_threshold": face_threshold,
        "safety_checker": safety_checker,
        "tiny": tiny,
    }
    describe = {
        "lvlm": lvlm,
        "attr_instruction": attr_instruction,
        "face_licence": FACE_LICENCES.get(face_backend.value, face_backend.value),
        "positive_ratio": positive_ratio,
    }

    def make_generator():
        from plvm.synth.ipadapter.generator import IPAdapterGenerator

        console.print(f"loading {model} + IP-Adapter {ip_adapter}/{ip_subfolder}/{ip_weight}")
        return IPAdapterGenerator.load(
            spec,
            gen_config,
            device=device,
            dtype=dtype,
            safety_checker=safety_checker,
            local_files_only=local_files_only,
            cpu_offload=cpu_offload,
        )

    def make_filters():
        from plvm.synth.filters import ClipPromptScorer, FaceIdentityScorer, PixelEmbedder, face_embedder, make_filters
        from plvm.synth.ipadapter.generator import resolve_device

        clip = None
        if clip_path != "none":
            clip = ClipPromptScorer.from_pretrained(
                clip_path, device=resolve_device(device), local_files_only=local_files_only
            )
        face = None
        if face_backend == FaceBackend.pixels:
            face = FaceIdentityScorer(PixelEmbedder(), source=PixelEmbedder.source)
        elif face_backend != FaceBackend.none:
            try:
                embed = face_embedder(face_backend.value, allow_noncommercial=allow_noncommercial)
            except ImportError as exc:
                fail(f"face filter unavailable ({exc}); use --face-backend none to run without it")
            face = FaceIdentityScorer(
                embed, source=getattr(embed, "source", face_backend.value), licence=FACE_LICENCES[face_backend.value]
            )
        return make_filters(clip, face, clip_threshold, face_threshold)

    def make_answerer():
        from plvm.synth.ipadapter.training_items import LVLMAnswerer

        console.print(f"loading the base LVLM {lvlm} for attribute answers")
        kw = {} if lvlm in ("tiny", "mini") else {"local_files_only": local_files_only}
        return LVLMAnswerer.load(
            lvlm, device=device, dtype=dtype, instruction=attr_instruction, max_new_tokens=attr_max_new_tokens, **kw
        )

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(
                total=total, desc=stage, unit="img" if stage == "generate" else "ref", disable=quiet
            )
        bar.update(done - bar.n)

    config = SynthConfig(
        images_per_ref=images_per_ref,
        n_prompts=n_prompts,
        prompt_seed=prompt_seed,
        seed=seed,
        positive_ratio=positive_ratio,
        keep_rejected=keep_rejected,
        limit=limit,
    )
    try:
        report = run_synthesis(
            refs,
            out,
            config,
            make_generator,
            make_filters,
            None if lvlm == "none" else make_answerer,
            settings=settings,
            describe=describe,
            progress=progress,
        )
    except SettingsMismatch as exc:
        fail(str(exc))
    except FileNotFoundError as exc:
        fail(str(exc))
    finally:
        for bar in bars.values():
            bar.close()
    for w in report.warnings:
        console.print(f"[yellow]warning[/]: {w}")
    console.print(
        f"[bold]done[/] in {report.seconds:.1f}s: {report.references} references, "
        f"{report.generated_now} images generated now, {report.kept} kept / {report.rejected} rejected "
        f"{report.rejected_by or ''}; items {report.items}"
    )
    typer.echo(json.dumps(report.to_dict()))
