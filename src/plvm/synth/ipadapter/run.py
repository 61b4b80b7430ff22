"""The resumable IP-Adapter synthesis run: references → generated images → filters → QA → ``train.json``.

Output (``OUT``), the layout :class:`plvm.training.data.FolderPersonalSource` reads, plus bookkeeping::

    OUT/train.json                 the training items (recognition + attribute QA)
    OUT/synth.json                 settings (checked on resume), models, filters, licences, counts
    OUT/prompts.json               the scene-prompt bank
    OUT/<ID>/ref_img.<ext>         copy of the reference face
    OUT/<ID>/gen_<k>.png           kept generated images
    OUT/<ID>/rejected/gen_<k>.png  rejected ones (unless keep_rejected=False)
    OUT/<ID>/images.json           per image: prompt, SD prompt, seed, scores, decision, reasons
    OUT/<ID>/attributes.json       the base LVLM's answers to the Table 12 questions (raw and rewritten)

Resuming: images already listed in ``<ID>/images.json`` and references with ``attributes.json`` are not
redone; ``train.json`` is rebuilt from them at the end of every run. A run whose generation settings
differ from those in ``synth.json`` is refused (use a new ``OUT``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ..filters import Decision, FilterChain
from ..prompts_bank import ScenePrompt, build_prompt_bank, prompts_for_reference
from .training_items import ConceptData, answer_attributes, build_items, count_kinds

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FORMAT_VERSION = 1


class SettingsMismatch(RuntimeError):
    """``OUT`` was made with other generation settings; resuming would mix two datasets."""


@dataclass(frozen=True)
class Reference:
    id: str
    path: Path


@dataclass
class SynthConfig:
    images_per_ref: int = 5
    n_prompts: int = 200
    prompt_seed: int = 0
    seed: int = 0
    positive_ratio: float = 0.6
    keep_rejected: bool = True
    limit: int | None = None
    qa_seed: int = 0


@dataclass
class RunReport:
    out: Path
    references: int
    generated_now: int
    images_total: int
    kept: int
    rejected: int
    rejected_by: dict[str, int]
    items: dict[str, int]
    attributes_now: int
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["out"] = str(self.out)
        return d


# ================================================================================ helpers
def concept_id(stem: str) -> str:
    """A folder-safe concept id from a file stem (``[A-Za-z0-9_.-]``; others become ``_``)."""
    cid = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).strip(".")
    return cid or "ref"


def _natural_key(path: Path) -> tuple[int, int, str]:
    stem = path.stem
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def discover_references(refs: str | Path, limit: int | None = None) -> list[Reference]:
    """The face images of a folder (CelebA-HQ layout: ``0.jpg``, ``1.jpg``, …), in natural order."""
    root = Path(refs)
    if not root.is_dir():
        raise FileNotFoundError(f"reference folder {root} does not exist")
    files = sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    out: list[Reference] = []
    seen: dict[str, Path] = {}
    for p in files:
        cid = concept_id(p.stem)
        if cid in seen:
            raise ValueError(f"{p.name} and {seen[cid].name} give the same concept id {cid!r}")
        seen[cid] = p
        out.append(Reference(cid, p))
    if not out:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    return out[:limit] if limit else out


def image_seed(seed: int, ref_id: str, index: int) -> int:
    """The seed of image ``index`` of ``ref_id`` (31-bit, independent of run order and batching)."""
    h = hashlib.sha256(f"{seed}/{ref_id}/{index}".encode()).digest()
    return int.from_bytes(h[:4], "big") & 0x7FFFFFFF


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path, default: Any) -> Any:
    if not path.exists():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


class _ReferenceCache:
    """The last few reference images, kept as the same objects (scorers cache their embeddings by object)."""

    def __init__(self, size: int = 64):
        self.size = size
        self._d: OrderedDict[Path, Image.Image] = OrderedDict()

    def get(self, path: Path) -> Image.Image:
        img = self._d.get(path)
        if img is None:
            with Image.open(path) as f:
                img = f.convert("RGB")
            self._d[path] = img
            if len(self._d) > self.size:
                self._d.popitem(last=False)
        else:
            self._d.move_to_end(path)
        return img


def copy_reference(ref: Reference, out: Path) -> Path:
    ext = ref.path.suffix.lower()
    dest = out / ref.id / f"ref_img{ext}"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ref.path, dest)
    return dest


# ================================================================================ the run
def run_synthesis(
    refs_dir: str | Path,
    out: str | Path,
    config: SynthConfig,
    generator_factory: Callable[[], Any] | None,
    filters_factory: Callable[[], FilterChain] | None,
    answerer_factory: Callable[[], Any] | None,
    settings: dict[str, Any] | None = None,
    describe: dict[str, Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RunReport:
    """Run (or resume) the whole synthesis; see the module docstring.

    Args:
        generator_factory: builds the :class:`~plvm.synth.ipadapter.generator.IPAdapterGenerator` (called only
            if some image is missing). ``None``: generate nothing (QA from what exists).
        filters_factory: builds the :class:`~plvm.synth.filters.FilterChain` (``None``: keep every image).
        answerer_factory: builds the attribute answerer (``None``: no attribute QA).
        settings: generation settings that must match on resume (merged with ``config``'s).
        describe: free-form facts recorded in ``synth.json`` (models, licences, …).
        progress: ``progress(stage, done, total)``.
    """
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    references = discover_references(refs_dir, config.limit)
    bank = build_prompt_bank(config.n_prompts, config.prompt_seed)

    fingerprint = {
        "format_version": FORMAT_VERSION,
        "images_per_ref": config.images_per_ref,
        "n_prompts": config.n_prompts,
        "prompt_seed": config.prompt_seed,
        "seed": config.seed,
        **(settings or {}),
    }
    meta_path = out / "synth.json"
    meta = _read_json(meta_path, {})
    if meta.get("settings") and meta["settings"] != fingerprint:
        diff = sorted(
            k for k in set(meta["settings"]) | set(fingerprint) if meta["settings"].get(k) != fingerprint.get(k)
        )
        raise SettingsMismatch(
            f"{out} was made with other settings ({', '.join(diff)}); "
            "use a new --out (or restore the old settings) to resume"
        )
    meta.update(
        {
            "generator": "plvm.synth.ipadapter",
            "settings": fingerprint,
            "describe": describe or {},
            "refs": str(refs_dir),
        }
    )
    _write_json(meta_path, meta)
    _write_json(out / "prompts.json", [p.to_dict() for p in bank])

    # ------------------------------------------------------------------ pending images
    state: dict[str, dict[str, Any]] = {}
    jobs: list[tuple[Reference, int, ScenePrompt]] = []
    for ref in references:
        copy_reference(ref, out)
        st = _read_json(out / ref.id / "images.json", {"reference": ref.path.name, "records": []})
        state[ref.id] = st
        done = {r["index"] for r in st["records"]}
        prompts = prompts_for_reference(bank, ref.id, config.images_per_ref, config.prompt_seed)
        jobs += [(ref, k, prompts[k]) for k in range(config.images_per_ref) if k not in done]

    generated = 0
    if jobs and generator_factory is None:
        warnings.append(f"{len(jobs)} images are missing and no generator was given")
    elif jobs:
        generated, info = _generate_all(jobs, out, state, config, generator_factory, filters_factory, progress)
        meta["generator_info"], meta["filters"] = info
        _write_json(meta_path, meta)

    # ------------------------------------------------------------------ attribute QA
    attributes_now = 0
    pending_attr = [r for r in references if not (out / r.id / "attributes.json").exists()]
    if pending_attr and answerer_factory is not None:
        answerer = answerer_factory()
        refs_cache = _ReferenceCache(4)
        for i, ref in enumerate(pending_attr):
            recs = answer_attributes(answerer, refs_cache.get(ref.path))
            _write_json(out / ref.id / "attributes.json", {"answerer": getattr(answerer, "name", "?"), "records": recs})
            attributes_now += 1
            if progress:
                progress("attributes", i + 1, len(pending_attr))
        if hasattr(answerer, "close"):
            answerer.close()
    elif pending_attr:
        warnings.append(
            f"no attribute QA for {len(pending_attr)} references (no LVLM given): the paper's data "
            "mix has recognition and attribute QA 1:1"
        )

    # ------------------------------------------------------------------ train.json
    concepts: list[ConceptData] = []
    kept = rejected = 0
    rejected_by: dict[str, int] = {}
    for ref in references:
        recs = sorted(state[ref.id]["records"], key=lambda r: r["index"])
        kept_files = [r["file"] for r in recs if r["accepted"]]
        kept += len(kept_files)
        for r in recs:
            if not r["accepted"]:
                rejected += 1
                for why in r["reasons"]:
                    key = why.split(":")[0]
                    rejected_by[key] = rejected_by.get(key, 0) + 1
        attrs = _read_json(out / ref.id / "attributes.json", {"records": []})["records"]
        concepts.append(ConceptData(ref.id, kept_files, attrs))
    items = build_items(concepts, seed=config.qa_seed, positive_ratio=config.positive_ratio)
    if not items:
        warnings.append("no training items: every image was rejected and there is no attribute QA")
    _write_json(out / "train.json", items)
    report = RunReport(
        out=out,
        references=len(references),
        generated_now=generated,
        images_total=sum(len(s["records"]) for s in state.values()),
        kept=kept,
        rejected=rejected,
        rejected_by=rejected_by,
        items=count_kinds(items),
        attributes_now=attributes_now,
        seconds=round(time.perf_counter() - t0, 2),
        warnings=warnings,
    )
    meta["last_run"] = report.to_dict()
    _write_json(meta_path, meta)
    return report


def _generate_all(
    jobs: Sequence[tuple[Reference, int, ScenePrompt]],
    out: Path,
    state: dict[str, dict[str, Any]],
    config: SynthConfig,
    generator_factory: Callable[[], Any],
    filters_factory: Callable[[], FilterChain] | None,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[int, tuple[Any, Any]]:
    from .generator import GenerationJob

    generator = generator_factory()
    chain = filters_factory() if filters_factory is not None else FilterChain([])
    cache = _ReferenceCache()
    bs = max(1, int(generator.config.batch_size))
    style = generator.config.style
    done = 0
    batches: list[list[tuple[Reference, int, ScenePrompt]]] = []
    for job in jobs:  # one reference per batch (the SD pipeline shares IP-Adapter features over a batch)
        if batches and batches[-1][0][0] == job[0] and len(batches[-1]) < bs:
            batches[-1].append(job)
        else:
            batches.append([job])
    for batch in batches:
        gjobs = [
            GenerationJob(
                cache.get(ref.path),
                p.sd_prompt(style),
                image_seed(config.seed, ref.id, k),
                {"ref": ref, "index": k, "scene": p},
            )
            for ref, k, p in batch
        ]
        results = generator.generate(gjobs)
        decisions: list[Decision] = chain.evaluate(
            [r.image for r in results], [r.job.meta["scene"].text for r in results], [r.job.reference for r in results]
        )
        touched: set[str] = set()
        for res, dec in zip(results, decisions):
            ref: Reference = res.job.meta["ref"]
            k: int = res.job.meta["index"]
            reasons = list(dec.reasons)
            if res.nsfw:
                reasons.append("safety_checker: flagged NSFW (image blacked out)")
            accepted = dec.accepted and not res.nsfw
            name = f"gen_{k:02d}.png"
            if accepted:
                rel = f"{ref.id}/{name}"
            elif config.keep_rejected:
                rel = f"{ref.id}/rejected/{name}"
            else:
                rel = None
            if rel is not None:
                path = out / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                res.image.save(path, format="PNG")
            scene: ScenePrompt = res.job.meta["scene"]
            state[ref.id]["records"].append(
                {
                    "index": k,
                    "file": rel,
                    "prompt": scene.text,
                    "sd_prompt": res.job.prompt,
                    "seed": res.job.seed,
                    "accepted": accepted,
                    "scores": dec.scores,
                    "reasons": reasons,
                    "nsfw": res.nsfw,
                }
            )
            touched.add(ref.id)
        for rid in touched:
            st = state[rid]
            st["records"].sort(key=lambda r: r["index"])
            _write_json(out / rid / "images.json", st)
        done += len(batch)
        if progress:
            progress("generate", done, len(jobs))
    info = (generator.describe() if hasattr(generator, "describe") else None, chain.describe())
    if hasattr(generator, "close"):
        generator.close()
    return done, info
