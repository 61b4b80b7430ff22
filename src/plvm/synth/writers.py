"""Writers that save an AvatarWorld evaluation set to disk in public dataset layouts.

* :func:`write_plvm_format` — the PLVM validation layout (``validation_recognition``)::

      <root>/<id>/ref_img.png
      <root>/<id>/query_img{N}.png            N = 0, 1, ...
      <root>/<id>/query_ques.json             visual multiple-choice questions (one per query image)
      <root>/<id>/non_query_ques.json         text-only multiple-choice questions
      <root>/scene_graphs.json                "<id>/query_img{N}.png" -> scene graph
      <root>/metadata.json                    eval-set parameters, concept and stranger identities

  Each question record has the PLVM fields ``ref_img``, ``query_img`` (``null`` for text-only
  questions), ``question``, ``multiple_choice`` (``{"A": .., "B": .., "C": ..}``) and
  ``correct_answer`` (the letter), plus ``kind``, ``answer`` (free-form / option text) and the asked
  ``attribute`` or ``visual`` property. Image paths are relative to ``<root>``.

* :func:`write_yollava_format` — the Yo'LLaVA layout: ``<root>/train/<id>/0.png`` (the reference)
  and ``<root>/test/<id>/{N}.png`` (the query photos), plus ``scene_graphs.json``, ``metadata.json``
  and root-level ``query_ques.json`` / ``non_query_ques.json`` (the same records as the PLVM layout,
  with paths into ``train/`` and ``test/``).

* :func:`write_multiconcept` — ``<root>/multi/images/<name>.png`` and ``<root>/multi/annotations.json``,
  a JSON object mapping each image file name (relative to ``multi/images``) to the list of concept
  ids in it (``[]`` for external images). Richer ground truth goes next to it: ``multi/index.json``
  (per image: file, concepts, ``external``, all people), ``multi/references/<id>.png`` and
  ``multi/scene_graphs.json``. Call it with the root of a PLVM or Yo'LLaVA layout so that ``multi/``
  sits next to the concept folders whose references it uses.

Readers are not part of this module (the evaluation harness owns them); the formats are described
in ``docs/AVATARWORLD.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from .evalset import EvalQA, EvalSet

FORMAT_VERSION = 1
PNG_COMPRESS_LEVEL = 4

Progress = Callable[[int], None]


def _save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _dump(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _metadata(eval_set: EvalSet, fmt: str) -> dict[str, Any]:
    return {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "generator": "plvm.synth.avatarworld",
        "eval": dict(eval_set.meta),
        "concepts": [i.to_dict() for i in eval_set.identities],
        "strangers": [i.to_dict() for i in eval_set.strangers],
    }


def _qa_record(q: EvalQA, ref_img: str, query_img: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "ref_img": ref_img,
        "query_img": query_img,
        "question": q.question,
        "multiple_choice": dict(q.options),
        "correct_answer": q.correct,
        "kind": q.kind,
        "answer": q.answer,
    }
    if q.kind == "text":
        rec["attribute"] = q.meta.get("attribute")
    else:
        rec["visual"] = q.meta.get("visual")
    return rec


def write_plvm_format(eval_set: EvalSet, root: str | Path, progress: Progress | None = None) -> Path:
    """Write ``eval_set`` in the PLVM validation layout under ``root`` (see module docstring)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, Any] = {}
    for ident in eval_set.identities:
        iid = ident.id
        ref_rel = f"{iid}/ref_img.png"
        _save_png(eval_set.references[iid], root / ref_rel)
        if progress:
            progress(1)
        for q in eval_set.queries_of(iid):
            rel = f"{iid}/query_img{q.index}.png"
            _save_png(q.image, root / rel)
            graphs[rel] = q.graph
            if progress:
                progress(1)
        visual = [
            _qa_record(v, ref_rel, f"{iid}/query_img{v.query_index}.png")
            for v in eval_set.visual_qa
            if v.identity_id == iid
        ]
        text = [_qa_record(t, ref_rel, None) for t in eval_set.text_qa if t.identity_id == iid]
        _dump(visual, root / iid / "query_ques.json")
        _dump(text, root / iid / "non_query_ques.json")
    _dump(graphs, root / "scene_graphs.json")
    _dump(_metadata(eval_set, "plvm"), root / "metadata.json")
    return root


def write_yollava_format(eval_set: EvalSet, root: str | Path, progress: Progress | None = None) -> Path:
    """Write ``eval_set`` in the Yo'LLaVA layout (``train/<id>/0.png``, ``test/<id>/{N}.png``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    graphs: dict[str, Any] = {}
    visual: list[dict[str, Any]] = []
    text: list[dict[str, Any]] = []
    for ident in eval_set.identities:
        iid = ident.id
        ref_rel = f"train/{iid}/0.png"
        _save_png(eval_set.references[iid], root / ref_rel)
        if progress:
            progress(1)
        for q in eval_set.queries_of(iid):
            rel = f"test/{iid}/{q.index}.png"
            _save_png(q.image, root / rel)
            graphs[rel] = q.graph
            if progress:
                progress(1)
        visual += [
            _qa_record(v, ref_rel, f"test/{iid}/{v.query_index}.png")
            for v in eval_set.visual_qa
            if v.identity_id == iid
        ]
        text += [_qa_record(t, ref_rel, None) for t in eval_set.text_qa if t.identity_id == iid]
    _dump(visual, root / "query_ques.json")
    _dump(text, root / "non_query_ques.json")
    _dump(graphs, root / "scene_graphs.json")
    _dump(_metadata(eval_set, "yollava"), root / "metadata.json")
    return root


def write_multiconcept(eval_set: EvalSet, root: str | Path, progress: Progress | None = None) -> Path:
    """Write the multi-concept images under ``root/multi`` and return that directory."""
    base = Path(root) / "multi"
    base.mkdir(parents=True, exist_ok=True)
    used = sorted({c for m in eval_set.multi for c in m.concepts})
    for iid in used:
        _save_png(eval_set.references[iid], base / "references" / f"{iid}.png")
    annotations: dict[str, list[str]] = {}
    images, graphs = [], {}
    for m in eval_set.multi:
        name = f"{m.name}.png"
        rel = f"images/{name}"
        _save_png(m.image, base / rel)
        annotations[name] = list(m.concepts)
        graphs[rel] = m.graph
        images.append(
            {
                "file": rel,
                "concepts": list(m.concepts),
                "external": m.external,
                "n_concepts": len(m.concepts),
                "people": [p["identity"] for p in m.graph["people"]],
            }
        )
        if progress:
            progress(1)
    index = {
        "format": "multiconcept",
        "format_version": FORMAT_VERSION,
        "concepts": {iid: {"reference": f"references/{iid}.png"} for iid in used},
        "images": images,
    }
    _dump(annotations, base / "annotations.json")
    _dump(index, base / "index.json")
    _dump(graphs, base / "scene_graphs.json")
    _dump(_metadata(eval_set, "multiconcept"), base / "metadata.json")
    return base


def count_images(eval_set: EvalSet, fmt: str) -> int:
    """Number of images a CLI run writes for ``fmt`` (for progress bars; ``all`` writes ``multi/`` twice)."""
    per_id = len(eval_set.identities) + len(eval_set.queries)
    multi = len(eval_set.multi)
    return {"plvm": per_id, "yollava": per_id, "multi": multi, "all": 2 * per_id + 2 * multi}[fmt]
