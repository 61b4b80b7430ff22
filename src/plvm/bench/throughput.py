"""Recognition throughput: Yes/No logit scoring (``score_yes_no``) vs generate-and-parse, same inputs.

Inputs: "Is <c> in this photo?" about PLVM concepts made from each concept's reference photo, on its own
query photos and as many other concepts' photos (:func:`plvm.bench.data.recognition_items`), up to
``queries`` items. Three ways to answer them, each timed over the whole item list per repeat (after a
warm-up pass):

* ``score_yes_no`` one query per forward (batch 1), and ``batch_size`` queries per forward;
* ``generate`` (greedy, ``max_new_tokens``, KV cache) one query at a time, the answer parsed with
  :func:`plvm.eval.prompts.parse_yes_no` (the eval harness's ``--scoring generate``).

Agreement: share of items where the logit decision (log-odds > 0) equals the parsed answer; an
unparseable answer counts as a disagreement (reported separately too). Batch-1 vs batched logits are
compared as well (padding must not change a decision).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .common import NOT_MEASURED, BenchResult, Run, Stats, Table, command_line, eprint, fmt_pct, md_table
from .data import accuracy, bench_dataset, load_bench_plvm, recognition_conversations, recognition_items


def bench_recognition(
    tiny: bool = False,
    data: str | None = None,
    aligner: str | None = None,
    queries: int = 32,
    batch_size: int = 8,
    max_new_tokens: int = 8,
    repeats: int = 3,
    warmup: int = 1,
    threads: int | None = None,
    seed: int = 0,
) -> BenchResult:
    from ..eval.prompts import parse_yes_no

    command = command_line(
        "plvm bench recognition",
        [
            ("--tiny", tiny),
            ("--data", data),
            ("--aligner", aligner),
            ("--queries", queries),
            ("--batch-size", batch_size),
            ("--max-new-tokens", max_new_tokens),
            ("--repeats", repeats),
            ("--warmup", warmup),
            ("--threads", threads),
        ],
    )
    run = Run(
        "recognition",
        command,
        {
            "queries": queries,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "repeats": repeats,
            "warmup": warmup,
            "seed": seed,
        },
        threads,
        tiny,
    )
    result = run.result
    plvm, info = load_bench_plvm(tiny, aligner, allow_untrained=True)
    dataset, data_info = bench_dataset(data, tiny, seed=seed)
    lvlm = plvm.lvlm
    concepts, items = {}, []
    for cid, record in dataset.concepts.items():
        if not record.query_images:
            continue
        concepts[cid] = plvm.make_concept(record.name, dataset.image(record.reference))
        items += recognition_items(dataset, cid, seed=seed)
    # a seeded subset that mixes concepts, positives and negatives
    order = np.random.default_rng([seed, 7]).permutation(len(items))[:queries]
    items = [items[i] for i in sorted(order.tolist())]
    convs = recognition_conversations(dataset, items, concepts)
    labels = [it.label for it in items]
    n = len(convs)

    def logits(bs: int) -> list[float]:
        out: list[float] = []
        for i in range(0, n, bs):
            out += [float(s) for s in lvlm.score_yes_no(convs[i : i + bs])]
        return out

    def generate() -> list[str]:
        return [lvlm.generate(c, max_new_tokens=max_new_tokens).text for c in convs]

    modes = {
        "logits_b1": lambda: logits(1),
        f"logits_b{batch_size}": lambda: logits(batch_size),
        "generate": generate,
    }
    outputs: dict[str, Any] = {}
    timings: dict[str, Stats] = {}
    for _ in range(max(0, warmup)):
        for fn in modes.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in modes}
    for r in range(max(1, repeats)):
        for key, fn in modes.items():  # interleaved, so load changes hit every mode
            t0 = time.perf_counter()
            outputs[key] = fn()
            samples[key].append(time.perf_counter() - t0)
        eprint(
            f"recognition: repeat {r + 1}/{repeats}: "
            + ", ".join(f"{k} {n / v[-1]:.2f} q/s" for k, v in samples.items())
        )
    for key, xs in samples.items():
        timings[key] = Stats.of(xs)
    qps = {key: Stats.of([n / x for x in timings[key].samples], unit="q/s") for key in modes}
    logit_pred = [s > 0 for s in outputs[f"logits_b{batch_size}"]]
    b1_pred = [s > 0 for s in outputs["logits_b1"]]
    parsed = [parse_yes_no(t) for t in outputs["generate"]]
    agree = sum(p is not None and p == q for p, q in zip(parsed, logit_pred)) / n
    result.data = {
        "model": info.to_dict(),
        "dataset": data_info,
        "queries": n,
        "seconds_per_pass": {k: v.to_dict() for k, v in timings.items()},
        "queries_per_s": {k: v.to_dict() for k, v in qps.items()},
        "agreement_logits_vs_generate": agree,
        "unparsed_generations": sum(p is None for p in parsed),
        "agreement_b1_vs_batched": sum(a == b for a, b in zip(b1_pred, logit_pred)) / n,
        "max_abs_logodds_diff_b1_vs_batched": max(
            (abs(a - b) for a, b in zip(outputs["logits_b1"], outputs[f"logits_b{batch_size}"])), default=0.0
        ),
        "accuracy": {"logits": accuracy(labels, logit_pred), "generate": accuracy(labels, parsed)},
        "examples": [
            {"label": lab, "logodds": s, "generated": t}
            for lab, s, t in list(zip(labels, outputs[f"logits_b{batch_size}"], outputs["generate"]))[:5]
        ],
        "speedup_logits_batched_over_generate": qps[f"logits_b{batch_size}"].median / qps["generate"].median,
        "speedup_logits_b1_over_generate": qps["logits_b1"].median / qps["generate"].median,
    }
    result.tables = recognition_tables(result.data, batch_size, max_new_tokens)
    result.notes.append(f"Model: {info.describe()}. Data: {data_info['source']}.")
    if not info.aligner_trained:
        result.notes.append(
            "Accuracy is not the point here (the Aligner may be untrained); agreement checks that both "
            "decoding paths give the same decision on the same inputs."
        )
    return run.finish()


def recognition_tables(data: dict[str, Any] | None, batch_size: int = 8, max_new_tokens: int = 8) -> list[Table]:
    headers = [
        "method",
        "queries/s (min / **median** / max)",
        "ms per query (median)",
        "speed-up vs generate",
        "agreement with generate-and-parse",
    ]
    if not data:
        return [
            Table(
                "Recognition throughput: Yes/No logits vs generate-and-parse",
                md_table(headers, [["-", NOT_MEASURED, "-", "-", "-"]]),
            )
        ]
    q = {k: Stats.from_dict(v) for k, v in data["queries_per_s"].items()}
    gen = q["generate"].median
    bkey = next(k for k in q if k.startswith("logits_b") and k != "logits_b1")
    b = bkey[len("logits_b") :]
    rows = [
        [
            "`score_yes_no`, batch 1",
            q["logits_b1"].fmt(2),
            f"{1e3 / q['logits_b1'].median:.0f}",
            f"{q['logits_b1'].median / gen:.1f}×",
            fmt_pct(data["agreement_logits_vs_generate"], 1),
        ],
        [
            f"`score_yes_no`, batch {b}",
            q[bkey].fmt(2),
            f"{1e3 / q[bkey].median:.0f}",
            f"{q[bkey].median / gen:.1f}×",
            fmt_pct(data["agreement_logits_vs_generate"], 1),
        ],
        [
            f"`generate` (greedy, ≤ {max_new_tokens} tokens) + parse",
            q["generate"].fmt(2),
            f"{1e3 / gen:.0f}",
            "1.0×",
            "-",
        ],
    ]
    note = (
        f"{data['queries']} queries; unparsed generations: {data['unparsed_generations']}; batch 1 vs batch {b} "
        f"logit decisions agree on {fmt_pct(data['agreement_b1_vs_batched'], 1)} (max |Δ log-odds| "
        f"{data['max_abs_logodds_diff_b1_vs_batched']:.2g})."
    )
    return [
        Table("Recognition throughput: Yes/No logits vs generate-and-parse", md_table(headers, rows) + "\n\n" + note)
    ]


__all__ = ["bench_recognition", "recognition_tables"]
