"""``plvm bench …`` — cost benchmarks of PLVM (:mod:`plvm.bench`).

Commands: ``cost`` (Table 7 at real size), ``concept-add`` (Table 6), ``recognition`` (throughput),
``scaling`` (concepts, identify, memory), ``face`` (face detect + embed per image, identify over 10^4
faces), ``base-cost`` (one recognition answer on two or more LLaVA-mini bases; not part of ``all``),
``all`` (everything else + ``docs/BENCHMARKS.md``) and ``report`` (re-render the doc from JSON);
``serve`` (a bounded local load test of ``plvm serve``) and ``reliability`` (hostile inputs, faults and
load → ``docs/RELIABILITY.md``).
Every command prints its Markdown tables and writes a JSON file; ``--tiny`` runs it on random tiny
models in seconds (smoke test — not results; ``face --tiny`` uses the real dlib models on 2 images).
"""

from __future__ import annotations

import gc
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from plvm.bench.common import BenchResult
from plvm.cli.common import fail

app = typer.Typer(
    help="Cost benchmarks: Aligner vs LVLM (Table 7), concept add (Table 6), recognition throughput, "
    "scaling, faces. Results as Markdown + JSON; `all` regenerates docs/BENCHMARKS.md.",
    no_args_is_help=True,
)

DEFAULT_DOC = Path("docs/BENCHMARKS.md")
TINY_DIR = Path("runs/bench-tiny")
RUN_DIR = Path("runs/bench")


class Skipped(Exception):
    """A benchmark of ``all`` that cannot run meaningfully here (the message says why)."""


def _csv(value: str, cast: Callable[[str], Any] = str) -> list[Any]:
    return [cast(v.strip()) for v in value.split(",") if v.strip()]


def _emit(result: BenchResult, json_path: Optional[Path]) -> None:
    path = json_path or ((TINY_DIR if result.tiny else RUN_DIR) / f"{result.name}.json")
    result.save(path)
    typer.echo(result.markdown())
    typer.echo(f"\n(JSON: {path})", err=True)


THREADS = typer.Option(None, "--threads", help="torch threads (default: all usable CPUs)")
TINY = typer.Option(False, "--tiny", help="random tiny models, seconds — a smoke test, not results")
JSON = typer.Option(None, "--json", help="JSON output (default: runs/bench/NAME.json, runs/bench-tiny/ with --tiny)")


@app.command("cost")
def cost_command(
    sizes: str = typer.Option("7b,mini", "--sizes", help="7b (LLaVA-1.5-7B, ~15 GB RAM) and/or mini"),
    repeats: int = typer.Option(3, "--repeats"),
    warmup: int = typer.Option(1, "--warmup"),
    aligner_runs: int = typer.Option(3, "--aligner-runs", help="Aligner encodes per LVLM repeat"),
    dtype_7b: str = typer.Option("bfloat16", "--dtype-7b"),
    dtype_mini: str = typer.Option("float32", "--dtype-mini"),
    params_only: bool = typer.Option(
        False, "--params-only", help="count parameters only (no 7B materialisation, no timing)"
    ),
    tiny: bool = TINY,
    threads: Optional[int] = THREADS,
    json_path: Optional[Path] = JSON,
) -> None:
    """Table 7: Aligner vs LVLM — parameters and time of one personalized answer's prefill + first token."""
    from plvm.bench.cost import bench_cost

    _emit(
        bench_cost(_csv(sizes), repeats, warmup, aligner_runs, threads, dtype_7b, dtype_mini, params_only, tiny),
        json_path,
    )


@app.command("concept-add")
def concept_add_command(
    data: Optional[str] = typer.Option(
        None, "--data", help="eval set folder (default: render a small AvatarWorld set)"
    ),
    aligner: Optional[str] = typer.Option(
        None, "--aligner", help="trained mini Aligner weights (file or checkpoint dir)"
    ),
    allow_untrained: bool = typer.Option(
        False, "--allow-untrained", help="run with a random Aligner (target meaningless)"
    ),
    concepts: int = typer.Option(2, "--concepts", help="concepts to tune Yo'LLaVA-style"),
    identities: int = typer.Option(8, "--identities", help="identities in the rendered set"),
    queries: int = typer.Option(
        8, "--queries", help="query photos per identity in the rendered set (half decide the stop, half measure)"
    ),
    encode_repeats: int = typer.Option(20, "--encode-repeats"),
    warmup: int = typer.Option(3, "--warmup"),
    cap_minutes: float = typer.Option(10.0, "--cap-minutes", help="tuning time cap per concept"),
    eval_every: int = typer.Option(10, "--eval-every", help="tuning steps between accuracy checks"),
    max_steps: Optional[int] = typer.Option(None, "--max-steps"),
    yollava_lr: Optional[float] = typer.Option(None, "--yollava-lr"),
    target: Optional[float] = typer.Option(
        None, "--target", help="accuracy Yo'LLaVA must reach on the stop items (default: PLVM's accuracy on them)"
    ),
    tiny: bool = TINY,
    threads: Optional[int] = THREADS,
    json_path: Optional[Path] = JSON,
) -> None:
    """Table 6: PLVM encode (ms) vs Yo'LLaVA-style tuning to the same recognition accuracy (minutes)."""
    from plvm.bench.concept_add import bench_concept_add

    _emit(
        bench_concept_add(
            tiny,
            data,
            aligner,
            allow_untrained,
            concepts,
            identities,
            queries,
            encode_repeats,
            warmup,
            cap_minutes,
            eval_every,
            max_steps,
            yollava_lr=yollava_lr,
            target=target,
            threads=threads,
        ),
        json_path,
    )


@app.command("recognition")
def recognition_command(
    data: Optional[str] = typer.Option(None, "--data"),
    aligner: Optional[str] = typer.Option(None, "--aligner"),
    queries: int = typer.Option(32, "--queries"),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_new_tokens: int = typer.Option(8, "--max-new-tokens"),
    repeats: int = typer.Option(3, "--repeats"),
    warmup: int = typer.Option(1, "--warmup"),
    tiny: bool = TINY,
    threads: Optional[int] = THREADS,
    json_path: Optional[Path] = JSON,
) -> None:
    """Recognition throughput: `score_yes_no` vs generate-and-parse (queries/s, agreement)."""
    from plvm.bench.throughput import bench_recognition

    _emit(
        bench_recognition(tiny, data, aligner, queries, batch_size, max_new_tokens, repeats, warmup, threads), json_path
    )


@app.command("scaling")
def scaling_command(
    only: str = typer.Option("concepts,identify,memory", "--only", help="parts: concepts, identify, memory"),
    counts: str = typer.Option("1,2,4,8", "--counts", help="active concepts per prompt"),
    store_sizes: str = typer.Option("100,1000,10000", "--store-sizes", help="stored concepts for identify"),
    repeats: int = typer.Option(10, "--repeats"),
    warmup: int = typer.Option(2, "--warmup"),
    identify_repeats: int = typer.Option(50, "--identify-repeats"),
    store_concepts: int = typer.Option(100, "--store-concepts", help="concepts added to measure store growth"),
    tiny: bool = TINY,
    threads: Optional[int] = THREADS,
    json_path: Optional[Path] = JSON,
) -> None:
    """Prompt tokens/latency vs active concepts; identify vs store size; memory per stored concept."""
    from plvm.bench.scaling import bench_scaling

    _emit(
        bench_scaling(
            tiny,
            _csv(only),
            _csv(counts, int),
            _csv(store_sizes, int),
            repeats,
            warmup,
            identify_repeats,
            store_concepts,
            threads,
        ),
        json_path,
    )


@app.command("base-cost")
def base_cost_command(
    projectors: str = typer.Option(
        "",
        "--projectors",
        help="LLaVA-mini projector files (or stage-1 checkpoint dirs), "
        "comma-separated; the committed projector is added "
        "first unless listed; ignored with --tiny",
    ),
    queries: int = typer.Option(24, "--queries", help="recognition questions (each asked in both prompt shapes)"),
    repeats: int = typer.Option(3, "--repeats"),
    warmup: int = typer.Option(1, "--warmup", help="untimed passes over the questions per base"),
    tiny: bool = TINY,
    threads: Optional[int] = THREADS,
    json_path: Optional[Path] = JSON,
) -> None:
    """One Yes/No recognition answer (batch 1) on each base, interleaved: ms per question, prompt tokens,
    ratio to the first base, start-up."""
    from plvm.bench.base_cost import bench_base_cost

    _emit(bench_base_cost(_csv(projectors), queries, repeats, warmup, threads, tiny), json_path)


#: ``plvm bench face`` settings of a full run and of a ``--tiny`` smoke run (dlib only: it loads fast).
FACE_DEFAULTS = {"n": 20, "backends": "dlib,insightface", "gallery": 10_000, "repeats": 20}
FACE_TINY = {"n": 2, "backends": "dlib", "gallery": 1000, "repeats": 3}


@app.command("face")
def face_command(
    n: Optional[int] = typer.Option(None, "--n", help="images timed per backend [default: 20; 2 with --tiny]"),
    backends: Optional[str] = typer.Option(
        None,
        "--backends",
        help="dlib and/or insightface (non-commercial "
        "weights, opted in for measuring) "
        "[default: dlib,insightface; dlib with --tiny]",
    ),
    gallery: Optional[int] = typer.Option(
        None, "--gallery", help="stored faces for identify [default: 10000; 1000 with --tiny]"
    ),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="timed identify calls [default: 20; 3 with --tiny]"),
    tiny: bool = typer.Option(False, "--tiny", help="few images and identify calls (real models) — a smoke test"),
    threads: Optional[int] = typer.Option(1, "--threads", help="torch/BLAS and onnxruntime threads"),
    json_path: Optional[Path] = JSON,
) -> None:
    """Faces: detect + align + embed per image (ms) per backend, identify one face among 10^4 stored ones."""
    from plvm.bench.face import bench_face_result

    d = FACE_TINY if tiny else FACE_DEFAULTS
    _emit(
        bench_face_result(
            d["n"] if n is None else n,
            _csv(d["backends"] if backends is None else backends),
            d["gallery"] if gallery is None else gallery,
            d["repeats"] if repeats is None else repeats,
            threads,
            tiny,
        ),
        json_path,
    )


@app.command("all")
def all_command(
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        help="the Markdown document (default: docs/BENCHMARKS.md; runs/bench-tiny/BENCHMARKS.md with --tiny)",
    ),
    json_dir: Optional[Path] = typer.Option(None, "--json-dir", help="(default: a 'benchmarks' folder next to --out)"),
    skip: str = typer.Option(
        "", "--skip", help="benchmarks to leave out: cost, concept-add, recognition, scaling, face"
    ),
    sizes: str = typer.Option("7b,mini", "--sizes", help="sizes for `cost`"),
    aligner: Optional[str] = typer.Option(None, "--aligner", help="trained mini Aligner weights"),
    allow_untrained: bool = typer.Option(False, "--allow-untrained", help="run concept-add with a random Aligner"),
    cap_minutes: float = typer.Option(10.0, "--cap-minutes", help="Yo'LLaVA tuning cap per concept"),
    tiny: bool = TINY,
    threads: Optional[int] = THREADS,
) -> None:
    """Run every benchmark (except base-cost) with its defaults and (re)write the Markdown document and JSON files."""
    from plvm.bench.report import FILES, NOT_IN_ALL, load_results, write_report

    out = out or ((TINY_DIR / "BENCHMARKS.md") if tiny else DEFAULT_DOC)
    json_dir = json_dir or (out.parent / "benchmarks")
    skipped = {s.replace("-", "_") for s in _csv(skip)}
    # sections `all` does not run (base-cost) keep the result already in json_dir, if any
    results: dict[str, BenchResult | None] = dict(load_results(json_dir, NOT_IN_ALL))
    errors: dict[str, str] = {}

    def concept_add() -> BenchResult:
        from plvm.bench.concept_add import bench_concept_add
        from plvm.pipeline import MINI_ALIGNER

        if not tiny and not allow_untrained and aligner is None and not MINI_ALIGNER.exists():
            raise Skipped(
                f"skipped: no trained mini Aligner at {MINI_ALIGNER}; pass --aligner PATH (or "
                "--allow-untrained, which makes the accuracy target meaningless)"
            )
        return bench_concept_add(
            tiny,
            None,
            aligner,
            allow_untrained,
            cap_minutes=(0.05 if tiny else cap_minutes),
            max_steps=(2 if tiny else None),
            eval_every=(1 if tiny else 10),
            encode_repeats=(3 if tiny else 20),
            warmup=(1 if tiny else 3),
            threads=threads,
        )

    def cost() -> BenchResult:
        from plvm.bench.cost import bench_cost

        return bench_cost(_csv(sizes), repeats=(2 if tiny else 3), warmup=1, threads=threads, tiny=tiny)

    def recognition() -> BenchResult:
        from plvm.bench.throughput import bench_recognition

        return bench_recognition(
            tiny,
            aligner=aligner,
            queries=(4 if tiny else 32),
            repeats=(1 if tiny else 3),
            max_new_tokens=(4 if tiny else 8),
            threads=threads,
        )

    def scaling() -> BenchResult:
        from plvm.bench.scaling import bench_scaling

        return bench_scaling(
            tiny,
            counts=((1, 2) if tiny else (1, 2, 4, 8)),
            store_sizes=((100, 1000) if tiny else (100, 1000, 10000)),
            repeats=(2 if tiny else 10),
            warmup=1 if tiny else 2,
            identify_repeats=(5 if tiny else 50),
            store_concepts=(5 if tiny else 100),
            threads=threads,
        )

    def face() -> BenchResult:
        from plvm.bench.face import bench_face_result

        d = FACE_TINY if tiny else FACE_DEFAULTS
        return bench_face_result(
            d["n"],
            _csv(d["backends"]),
            d["gallery"],
            d["repeats"],
            threads=(1 if threads is None else threads),
            tiny=tiny,
        )

    steps = {"cost": cost, "concept_add": concept_add, "recognition": recognition, "scaling": scaling, "face": face}
    for name, fn in steps.items():
        if name in skipped:
            results[name] = None
            continue
        typer.echo(f"== plvm bench {name.replace('_', '-')} ==", err=True)
        try:
            res = fn()
        except Skipped as exc:
            errors[name] = str(exc)
            typer.secho(f"{name}: {exc}", fg=typer.colors.YELLOW, err=True)
            results[name] = None
        except Exception as exc:  # one failing benchmark must not lose the others
            errors[name] = " ".join(f"failed: {type(exc).__name__}: {exc}".split())[:300]
            typer.secho(f"{name} {errors[name]}", fg=typer.colors.RED, err=True)
            traceback.print_exc()
            results[name] = None
        else:
            res.save(json_dir / FILES[name])
            results[name] = res
            typer.echo(res.markdown(), err=True)
        gc.collect()
        write_report(out, results, errors=errors, json_dir=str(json_dir))
    typer.echo(f"wrote {out} and {json_dir}/", err=True)
    if any(e.startswith("failed") for e in errors.values()):
        raise typer.Exit(1)


@app.command("report")
def report_command(
    json_dir: Path = typer.Option(
        Path("docs/benchmarks"),
        "--json-dir",
        help="folder with cost.json, concept_add.json, … (runs/bench for single runs)",
    ),
    out: Path = typer.Option(DEFAULT_DOC, "--out"),
    smoke_dir: Optional[Path] = typer.Option(None, "--smoke-dir", help="also show a tiny smoke run's JSON (labelled)"),
) -> None:
    """Re-render the Markdown document from JSON results (missing ones: 'not yet measured')."""
    from plvm.bench.report import load_results, write_report

    results = load_results(json_dir)
    smoke = load_results(smoke_dir) if smoke_dir is not None else None
    # name the JSON folder in the document only when it is a repository-relative path
    write_report(out, results, smoke=smoke, json_dir=None if json_dir.is_absolute() else str(json_dir))
    typer.echo(f"wrote {out} ({len(results)} benchmark(s) from {json_dir})")


@app.command("serve")
def serve_command(
    requests: int = typer.Option(500, "--requests", help="requests to send (1-100000)"),
    concurrency: int = typer.Option(8, "--concurrency", help="clients at once (1-64)"),
    memory: bool = typer.Option(False, "--memory", help="instead: server memory under concurrent large uploads"),
    uploads: int = typer.Option(8, "--uploads", help="with --memory: concurrent 16000x2400 PNG uploads"),
    faces: bool = typer.Option(False, "--faces/--no-faces", help="run the server with its face backend"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="also write the figures as JSON"),
) -> None:
    """Bounded local load test of `plvm serve --model tiny` on 127.0.0.1 (stops by itself): errors, p50/p95."""
    import json

    from plvm.bench.reliability import load_markdown, memory_markdown
    from plvm.bench.serve import load_test, upload_memory

    try:
        result = upload_memory(uploads, faces=faces) if memory else load_test(requests, concurrency, faces=faces)
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    typer.echo(memory_markdown(result) if memory else load_markdown(result))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")


@app.command("reliability")
def reliability_command(
    out: Path = typer.Option(Path("docs/RELIABILITY.md"), "--out", help="the Markdown report"),
    json_path: Path = typer.Option(Path("docs/benchmarks/reliability.json"), "--json", help="every case as JSON"),
    writers: int = typer.Option(50, "--writers", help="concepts each of the two concurrent writers adds"),
    load_requests: int = typer.Option(500, "--load-requests", help="requests of the load test (0: skip it)"),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="measure server memory under 8 large uploads"),
    only: Optional[str] = typer.Option(
        None,
        "--only",
        help="re-run just this group (checkpoints) and keep the other groups, memory and load from the existing --json",
    ),
) -> None:
    """Hostile inputs, faults and load through CLI, API and Python → docs/RELIABILITY.md (exit 1 on a failure)."""
    import json
    import time

    from plvm.bench.reliability import (
        STANDALONE_GROUPS,
        failures,
        from_json,
        markdown,
        run_all,
        run_group,
        summary,
        to_json,
    )
    from plvm.bench.serve import load_test, upload_memory

    t0 = time.perf_counter()
    if only is not None:
        if only not in STANDALONE_GROUPS:
            typer.secho(
                f"error: --only runs one of {', '.join(STANDALONE_GROUPS)}; got {only!r}", fg=typer.colors.RED, err=True
            )
            raise typer.Exit(2)
        try:
            previous = json.loads(json_path.read_text())
            kept = from_json(c for c in previous["cases"] if c["group"] != only)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            typer.secho(
                f"error: --only needs the JSON of a previous full run at {json_path} ({exc})",
                fg=typer.colors.RED,
                err=True,
            )
            raise typer.Exit(2) from None
        outcomes = kept + run_group(only)
        mem, load = previous.get("memory"), previous.get("load")
        took, rerun = previous.get("took_s"), (only, time.perf_counter() - t0)
        if took is None and out.is_file():  # reports before the JSON recorded it: the full run's time, as printed
            import re

            found = re.search(r"this run took (\d+) s", out.read_text())
            took = float(found.group(1)) if found else None
        command = previous.get("command") or _reliability_command(writers, load_requests, memory)
    else:
        outcomes = run_all(writers=writers)
        mem = upload_memory(8) if memory else None
        load = load_test(load_requests, 8) if load_requests else None
        took, rerun = time.perf_counter() - t0, None
        command = _reliability_command(writers, load_requests, memory)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(outcomes, load=load, memory=mem, command=command, took_s=took, rerun=rerun))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(
        json.dumps(
            {
                "summary": summary(outcomes),
                "cases": to_json(outcomes),
                "memory": mem,
                "load": load,
                "command": command,
                "took_s": took,
                **({"rerun": {"group": rerun[0], "took_s": rerun[1]}} if rerun else {}),
            },
            indent=1,
        )
        + "\n"
    )
    bad = failures(outcomes)
    for o in bad:
        typer.echo(f"FAILED {o.group} / {o.surface} / {o.case}: {o.result} {o.detail}", err=True)
    typer.echo(f"wrote {out} and {json_path}: {len(outcomes)} cases, {len(bad)} failed")
    if bad or (load and load["all"]["errors"]):
        raise typer.Exit(1)


def _reliability_command(writers: int, load_requests: int, memory: bool) -> str:
    args = ["plvm bench reliability"]
    if writers != 50:
        args.append(f"--writers {writers}")
    if load_requests != 500:
        args.append(f"--load-requests {load_requests}")
    if not memory:
        args.append("--no-memory")
    return " ".join(args)
