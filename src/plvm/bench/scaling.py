"""How cost grows with the number of concepts.

* ``concepts`` — prompt tokens and one-forward recognition latency (``score_yes_no``, batch 1) with
  1, 2, 4, 8 concepts active in one conversation (each introduced as ``<c_i> is <t1>…<tk>.``, the question
  names all of them: "Can you see <c0>, … and <c7> in this photo? …"). Concept embeddings are random
  (values do not change the cost); the query image is fixed noise.
* ``identify`` — who-is-this over stores of 10², 10³, 10⁴ concepts: :meth:`plvm.identify.Identifier.identify`
  on random unit features (the store's cached, L2-normalised matrix; one matrix product + ranking + top-k).
  The query's encoder pass is not included (it is one reference-encoder forward, see ``concept-add``),
  nor is reading the matrix from SQLite (cached after the first call). The bare ``q @ M.T`` is timed too.
* ``memory`` — bytes per stored concept at mini (d = 576) and 7B (d = 4096) sizes with k = 16: the concept
  file as :meth:`ConceptEmbedding.save` writes it, the growth of a real :class:`~plvm.store.ConceptStore`
  per added concept (files + SQLite index with its feature vector), and RAM: the concept's tensors when
  active (float32 as loaded; bf16 copy inside a bf16 model) and its row of the identify matrix.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .common import (
    NOT_MEASURED,
    BenchResult,
    Run,
    Stats,
    Table,
    command_line,
    eprint,
    fmt_bytes,
    fmt_bytes_exact,
    fmt_int,
    md_table,
    measure,
)
from .data import load_bench_plvm, random_concepts

PARTS = ("concepts", "identify", "memory")
#: (label, d_llm, k, d_enc, model dtype bytes) of the paper's and the mini configuration
MEMORY_SIZES = {"mini": ("LLaVA-mini", 576, 16, 384, 4), "7b": ("LLaVA-1.5-7B", 4096, 16, 768, 2)}
IDENTIFY_DIMS = {"mini": 384, "7b": 768}


# ---------------------------------------------------------------------- concepts in one prompt
def concepts_scaling(
    plvm: Any, counts: Sequence[int], repeats: int, warmup: int, seed: int = 0
) -> list[dict[str, Any]]:
    from ..conversation import single_turn
    from ..eval.prompts import MULTI_QUESTION, join_names
    from .cost import _image_side, _noise_image, prompt_composition

    lvlm = plvm.lvlm
    k = plvm.aligner.config.num_queries
    scale = float(lvlm.model.get_input_embeddings().weight.detach().float().std())
    image = _noise_image(_image_side(lvlm.processor), seed)
    rows = []
    for c in counts:
        names = [f"c{i}" for i in range(c)]
        concepts = random_concepts(names, lvlm.hidden_size, k, lvlm.base_model_id, scale=scale, seed=seed)
        conv = single_turn(MULTI_QUESTION.format(names=join_names(names)), concepts, image=image)
        batch, _ = lvlm.prepare([conv])
        tokens = prompt_composition(lvlm, batch)
        stats, _ = measure(lambda: lvlm.score_yes_no([conv]), repeats, warmup)
        eprint(f"scaling: {c} concepts: {tokens['total']} tokens, {stats.median * 1e3:.1f} ms")
        rows.append({"concepts": c, "prompt_tokens": tokens, "latency_s": stats.to_dict()})
    return rows


# ---------------------------------------------------------------------- identify
class _MatrixStore:
    """Just what :class:`Identifier` reads from a store: the cached feature matrix."""

    def __init__(self, matrix: Any):
        self._matrix = matrix

    def feature_matrix(self, kind: str) -> Any:
        return self._matrix


class _FixedEncoder:
    """Stands in for the reference encoder: returns a fixed query feature per crop (no model pass)."""

    face = None

    def __init__(self, kind: str, query: np.ndarray):
        self.kind = kind
        self.query = query

    def features(self, images: Sequence[Any], batch_size: int = 16) -> np.ndarray:
        return np.repeat(self.query[None], len(images), axis=0)


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def identify_scaling(
    sizes: Sequence[int], dims: dict[str, int], repeats: int, warmup: int, seed: int = 0
) -> list[dict[str, Any]]:
    from PIL import Image

    from ..identify import Identifier
    from ..store import FeatureMatrix

    image = Image.new("RGB", (64, 64), (128, 128, 128))
    rows = []
    for label, d in dims.items():
        query = unit_rows(1, d, seed + 1)[0]
        for n in sizes:
            matrix = unit_rows(n, d, seed)
            fm = FeatureMatrix("ref:bench", tuple(f"c{i}" for i in range(n)), matrix, 0)
            identifier = Identifier(_MatrixStore(fm), _FixedEncoder("ref:bench", query))  # type: ignore[arg-type]
            stats, res = measure(lambda: identifier.identify(image, top_k=10), repeats, warmup)
            q = query[None]
            raw, _ = measure(lambda: q @ matrix.T, repeats, warmup)
            best = int(np.argmax(matrix @ query))
            if res.matches[0].name != f"c{best}":
                raise AssertionError("identify did not rank the best-matching concept first")
            rows.append(
                {
                    "size": label,
                    "d_enc": d,
                    "concepts": n,
                    "identify_s": stats.to_dict(),
                    "matmul_s": raw.to_dict(),
                    "matrix_bytes": int(matrix.nbytes),
                }
            )
            eprint(f"scaling: identify {label} d={d} N={n}: {stats.median * 1e6:.0f} µs")
    return rows


# ---------------------------------------------------------------------- memory
def _dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def memory_per_concept(
    sizes: dict[str, tuple[str, int, int, int, int]], store_concepts: int, seed: int = 0
) -> list[dict[str, Any]]:
    from ..store import ConceptStore, NewConcept, StoreIdentity

    rows = []
    for key, (label, d, k, d_enc, model_bytes) in sizes.items():
        base = f"bench/{key}"
        with tempfile.TemporaryDirectory(prefix="plvm-bench-mem-") as tmp:
            concept = random_concepts(["probe"], d, k, base, seed=seed)[0]
            path = concept.save(Path(tmp) / "probe.safetensors")
            file_bytes = path.stat().st_size
            loaded = type(concept).load(path)
            ram_f32 = sum(t.numel() * t.element_size() for t in (loaded.e_word, loaded.e_weight, loaded.context))
            store_root = Path(tmp) / "store"
            store = ConceptStore(store_root, StoreIdentity(base, d))
            store.close()
            empty = _dir_bytes(store_root)
            store = ConceptStore(store_root, StoreIdentity(base, d))
            rng = np.random.default_rng(seed)
            items = [
                NewConcept(c, features={"ref:bench": rng.standard_normal(d_enc).astype(np.float32)})
                for c in random_concepts([f"c{i}" for i in range(store_concepts)], d, k, base, seed=seed + 1)
            ]
            store.add_many(items)
            store.close()
            full = _dir_bytes(store_root)
        rows.append(
            {
                "size": key,
                "label": label,
                "d_llm": d,
                "k": k,
                "d_enc": d_enc,
                "tensor_values": (2 + k) * d,
                "file_bytes": file_bytes,
                "store_bytes_per_concept": (full - empty) / store_concepts,
                "store_concepts": store_concepts,
                "ram_active_float32_bytes": ram_f32,
                "ram_active_model_dtype_bytes": (2 + k) * d * model_bytes,
                "model_dtype_bytes": model_bytes,
                "identify_row_bytes": d_enc * 4,
            }
        )
    return rows


# ---------------------------------------------------------------------- the benchmark
def bench_scaling(
    tiny: bool = False,
    parts: Sequence[str] = PARTS,
    counts: Sequence[int] = (1, 2, 4, 8),
    store_sizes: Sequence[int] = (100, 1000, 10000),
    repeats: int = 10,
    warmup: int = 2,
    identify_repeats: int = 50,
    store_concepts: int = 100,
    threads: int | None = None,
    seed: int = 0,
) -> BenchResult:
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    command = command_line(
        "plvm bench scaling",
        [
            ("--tiny", tiny),
            ("--only", list(parts) if tuple(parts) != PARTS else None),
            ("--counts", list(counts) if "concepts" in parts else None),
            ("--store-sizes", list(store_sizes) if "identify" in parts else None),
            ("--repeats", repeats),
            ("--warmup", warmup),
            ("--identify-repeats", identify_repeats if "identify" in parts else None),
            ("--store-concepts", store_concepts if "memory" in parts else None),
            ("--threads", threads),
        ],
    )
    run = Run(
        "scaling",
        command,
        {
            "parts": list(parts),
            "counts": list(counts),
            "store_sizes": list(store_sizes),
            "repeats": repeats,
            "warmup": warmup,
            "identify_repeats": identify_repeats,
            "store_concepts": store_concepts,
            "seed": seed,
        },
        threads,
        tiny,
    )
    result = run.result
    data: dict[str, Any] = {}
    plvm = None
    if "concepts" in parts:
        plvm, info = load_bench_plvm(tiny, None, allow_untrained=True)
        data["model"] = info.to_dict()
        data["concepts"] = concepts_scaling(plvm, counts, repeats, warmup, seed)
        result.notes.append(f"Concept scaling model: {info.describe()} (weights do not change the cost).")
    if "identify" in parts:
        dims = {"tiny": 32} if tiny else IDENTIFY_DIMS
        data["identify"] = identify_scaling(store_sizes, dims, identify_repeats, max(warmup, 3), seed)
    if "memory" in parts:
        sizes = dict(MEMORY_SIZES)
        if tiny:
            if plvm is None:
                plvm, _ = load_bench_plvm(True)
            sizes = {
                "tiny": (
                    "tiny (smoke)",
                    plvm.lvlm.hidden_size,
                    plvm.aligner.config.num_queries,
                    plvm.aligner.config.d_enc,
                    4,
                ),
                "7b": MEMORY_SIZES["7b"],
            }
        data["memory"] = memory_per_concept(sizes, store_concepts, seed)
    result.data = data
    result.tables = scaling_tables(data)
    return run.finish()


def scaling_tables(data: dict[str, Any] | None) -> list[Table]:
    data = data or {}
    tables = []
    rows = []
    for r in data.get("concepts", []):
        t = r["prompt_tokens"]
        s = Stats.from_dict(r["latency_s"]).scaled(1e3, "ms")
        rows.append([r["concepts"], t["total"], t["concept"], t["image"], t["text"], s.fmt(1)])
    if not rows:
        rows = [["1, 2, 4, 8", NOT_MEASURED, "-", "-", "-", "-"]]
    tables.append(
        Table(
            "Active concepts in one prompt: tokens and recognition latency (`score_yes_no`, batch 1)",
            md_table(
                [
                    "active concepts",
                    "prompt tokens",
                    "of which concept tokens",
                    "image tokens",
                    "other text",
                    "latency (min / **median** / max)",
                ],
                rows,
            ),
        )
    )
    rows = []
    for r in data.get("identify", []):
        s = Stats.from_dict(r["identify_s"]).scaled(1e6, "µs")
        m = Stats.from_dict(r["matmul_s"]).scaled(1e6, "µs")
        rows.append([r["size"], r["d_enc"], fmt_int(r["concepts"]), s.fmt(0), m.fmt(0), fmt_bytes(r["matrix_bytes"])])
    if not rows:
        rows = [["mini / 7B", "384 / 768", "10², 10³, 10⁴", NOT_MEASURED, "-", "-"]]
    tables.append(
        Table(
            "Identify over a store (one matrix product, encoder pass excluded)",
            md_table(
                [
                    "encoder size",
                    "feature dim",
                    "stored concepts",
                    "`Identifier.identify`",
                    "bare `q @ M.T`",
                    "feature matrix in RAM",
                ],
                rows,
            ),
        )
    )
    rows = []
    for r in data.get("memory", []):
        rows.append(
            [
                r["label"],
                r["d_llm"],
                r["k"],
                fmt_int(r["tensor_values"]),
                fmt_bytes_exact(r["file_bytes"]),
                f"{fmt_bytes_exact(r['store_bytes_per_concept'])}, mean of {r['store_concepts']}",
                fmt_bytes_exact(r["ram_active_float32_bytes"]),
                f"{fmt_bytes_exact(r['ram_active_model_dtype_bytes'])}, {r['model_dtype_bytes'] * 8}-bit",
                fmt_bytes_exact(r["identify_row_bytes"]),
            ]
        )
    if not rows:
        rows = [["mini / 7B", "-", "-", "-", NOT_MEASURED, "-", "-", "-", "-"]]
    tables.append(
        Table(
            "Memory per stored concept",
            md_table(
                [
                    "model",
                    "d",
                    "k",
                    "values (2 + k)·d",
                    "concept file on disk",
                    "store growth per concept (files + index)",
                    "RAM when active (float32)",
                    "RAM inside the model",
                    "identify-matrix row",
                ],
                rows,
            ),
        )
    )
    return tables


__all__ = ["bench_scaling", "identify_scaling", "memory_per_concept", "scaling_tables", "concepts_scaling"]
