"""One resumable training loop on HF accelerate, shared by the Aligner trainer and LLaVA-mini's stage 1.

A :class:`TrainingTask` says *what* trains (a module's trainable parameters), *which* batch belongs to a
step (batches are a pure function of ``(seed, step)``, so resuming is exact without storing iterator
state) and *how* to compute the loss. :func:`run_training` does the rest: AdamW, gradient accumulation and
mixed precision through ``accelerate`` (single CPU here; multi-GPU without code changes), a progress bar,
a JSONL loss log with a PNG plot, and safetensors checkpoints (weights, optimizer state and RNG state —
never pickle) every ``save_every`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm


@dataclass
class LoopConfig:
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"
    save_every: int = 100
    log_every: int = 10
    seed: int = 0
    threads: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainingTask(Protocol):
    def trainable_module(self) -> nn.Module:
        """The module whose parameters with ``requires_grad`` train (it is saved in checkpoints)."""

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def batch(self, step: int) -> Any:
        """The batch of ``step``: a deterministic function of the task's seed and ``step``."""

    def loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and extra numbers to log (a batch may omit one; the log averages those it has)."""

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description stored in checkpoints (config, data, base model)."""


# ---------------------------------------------------------------------- checkpoints
def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimizer state dict into tensors (safetensors) + JSON (hyper-parameters)."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, slots in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(slots)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    out_dir: Path, step: int, task: TrainingTask, optimizer: torch.optim.Optimizer, config: LoopConfig
) -> Path:
    """``out_dir/checkpoint-<step>/``: trainable.safetensors, optimizer.safetensors, rng.safetensors, state.json."""
    ckpt = out_dir / f"checkpoint-{step:06d}"
    ckpt.mkdir(parents=True, exist_ok=True)
    _atomic_save(task.trainable_state_dict(), ckpt / "trainable.safetensors", {"step": str(step)})
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    _atomic_save(opt_tensors, ckpt / "optimizer.safetensors")
    _atomic_save({"torch": torch.get_rng_state()}, ckpt / "rng.safetensors")
    state = {"step": step, "loop": config.to_dict(), "task": task.describe(), "optimizer": opt_meta}
    _atomic_write_text(ckpt / "state.json", json.dumps(state, indent=2, sort_keys=True))
    _atomic_write_text(out_dir / "latest", ckpt.name)
    return ckpt


def latest_checkpoint(out_dir: Path) -> Path | None:
    marker = out_dir / "latest"
    if marker.exists():
        path = out_dir / marker.read_text().strip()
        if (path / "state.json").exists():
            return path
    return None


def load_checkpoint(ckpt: Path, task: TrainingTask, optimizer: torch.optim.Optimizer | None) -> int:
    state = json.loads((ckpt / "state.json").read_text())
    task.load_trainable_state_dict(load_file(str(ckpt / "trainable.safetensors")))
    if optimizer is not None:
        optimizer.load_state_dict(
            optimizer_from_tensors(load_file(str(ckpt / "optimizer.safetensors")), state["optimizer"])
        )
    torch.set_rng_state(load_file(str(ckpt / "rng.safetensors"))["torch"])
    return int(state["step"])


# ---------------------------------------------------------------------- log + plot
def plot_loss(log_path: Path, png_path: Path, title: str = "training loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot(steps, [r["loss"] for r in rows], label="loss (window mean)")
    have = [r for r in rows if "loss_word" in r]  # a task may not log the answer word's CE
    if have:
        ax.plot([r["step"] for r in have], [r["loss_word"] for r in have], label="Yes/No word CE", alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


# ---------------------------------------------------------------------- the loop
def run_training(task: TrainingTask, config: LoopConfig, out_dir: str | os.PathLike, resume: bool = True) -> dict:
    """Train ``task`` for ``config.steps`` optimizer steps, resuming from ``out_dir`` if it holds a checkpoint.

    Returns a summary dict (final step, mean loss of the last window, seconds).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision=config.mixed_precision,
        cpu=not torch.cuda.is_available(),
    )
    module = task.trainable_module()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    ckpt = latest_checkpoint(out) if resume else None
    if ckpt is not None:
        start = load_checkpoint(ckpt, task, optimizer)
        accelerator.print(f"resumed from {ckpt} at step {start}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    )
    for _ in range(start):
        scheduler.step()
    module, optimizer = accelerator.prepare(module, optimizer)
    log_path = out / "log.jsonl"
    if start == 0 and log_path.exists():
        log_path.unlink()
    (out / "run.json").write_text(
        json.dumps(
            {"loop": config.to_dict(), "task": task.describe(), "machine": machine_info()}, indent=2, sort_keys=True
        )
    )
    window: list[dict[str, float]] = []
    t0 = time.time()
    bar = tqdm(total=config.steps, initial=start, desc="train", dynamic_ncols=True, mininterval=5)
    step = start
    while step < config.steps:
        for micro in range(config.grad_accum):
            batch = task.batch(step * config.grad_accum + micro)
            with accelerator.accumulate(module), accelerator.autocast():
                loss, extras = task.loss(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.max_grad_norm:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            window.append({"loss": float(loss.detach()), **extras})
        scheduler.step()
        step += 1
        bar.update(1)
        if step % config.log_every == 0 or step == config.steps:
            keys = dict.fromkeys(k for r in window for k in r)  # a measure a batch lacks is left out of its mean
            means = {k: sum(r[k] for r in window if k in r) / sum(k in r for r in window) for k in keys}
            row = {"step": step, **means, "lr": scheduler.get_last_lr()[0], "elapsed_s": time.time() - t0}
            with log_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(loss=f"{means['loss']:.3f}")
            window = []
        if step % config.save_every == 0 or step == config.steps:
            save_checkpoint(out, step, task, optimizer, config)
            plot_loss(log_path, out / "loss.png")
    bar.close()
    rows = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    return {"step": step, "last": rows[-1] if rows else None, "seconds": time.time() - t0}


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
