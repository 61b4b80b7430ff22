"""Fitting the concept's output row on cached answer states (not in the paper; name-first Aligners only).

With name-first answers (:class:`~plvm.training.aligner_task.AlignerTaskConfig`) the recognition decision at
the first answer position is ``h · e_weight(ref) − logit_No``, with ``h`` the frozen LM's last hidden state
there. Training (Eq. 2 + the identity-bank loss) shows ``f_weight`` each query photo once. Here the Aligner's
word and context path stays as trained, the answer states of many recognition queries are computed once,
and ``f_weight`` alone is fitted on the identity-bank loss over all of them for many epochs — the full-batch
fit a linear probe gets.

Two terms. The identity-bank loss scores each ``h`` against the rows of *every* training identity; ``h`` of
query ``i`` was computed under the prompt of its own sample's concept, so for the other rows this is an
approximation (at inference the prompt is that of the concept asked about). The own-pair term is exact: each
query against its own concept's row, the decision the evaluation harness scores (session 10 measured that
~60 % of a recognition score's variance is the concept asked about, which only this term sees).

Model selection is on *new identities*: a share of the identities is held out of both terms, and the epoch kept
is the one whose own-pair decisions on the queries about held-out identities separate positives from negatives
best (ROC AUC pooled over those queries, as the harness scores).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from ..eval.metrics import roc_auc
from .aligner_task import RECOGNITION_KINDS, AlignerTrainingTask, balanced_logistic_loss, bank_objective, mean_query_auc
from .loop import _atomic_save, _atomic_write_text


@dataclass
class RowFitConfig:
    queries: int = 1500  # recognition queries whose answer states are cached
    epochs: int = 300
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch: int = 8  # LM forward batch while caching states
    heldout_identities: float = 0.15  # share of the bank's identities kept out of the fit, for choosing the epoch
    #: weight of the own-pair term: each query against its own prompt's concept, the one decision the harness scores
    own_weight: float = 1.0
    eval_every: int = 10
    seed: int = 0
    #: batch indices of the data source used for the queries start here (beyond any training run's)
    first_index: int = 3 * 10**6

    def __post_init__(self) -> None:
        if self.queries < 2 or self.epochs < 1 or self.batch < 1 or self.eval_every < 1:
            raise ValueError("row fit: queries >= 2, epochs >= 1, batch >= 1 and eval_every >= 1 are required")
        if self.own_weight < 0:
            raise ValueError(f"own_weight must be >= 0, got {self.own_weight}")
        if not 0.0 < self.heldout_identities < 1.0:
            raise ValueError(f"heldout_identities must be in (0, 1), got {self.heldout_identities}")


@dataclass
class AnswerStates:
    """Cached answer-position states of recognition queries."""

    h: torch.Tensor  # [N, d] fp32
    no: torch.Tensor  # [N] logit of "No"
    query_identities: list[tuple[str, ...]]
    own_tokens: torch.Tensor  # [N, d_enc] global token z_ref[0] of each sample's own reference (its prompt's concept)
    own_labels: torch.Tensor  # [N] 1 where that concept is in the photo (a positive sample)
    concept_ids: list[str]  # each sample's concept identity

    def save(self, path: str | Path, tag: str) -> None:
        """Write to ``path`` (safetensors; identities and ``tag`` — what the states were computed with — in
        the header)."""
        _atomic_save(
            {"h": self.h, "no": self.no, "own_tokens": self.own_tokens, "own_labels": self.own_labels},
            Path(path),
            {
                "query_identities": json.dumps([list(q) for q in self.query_identities]),
                "concept_ids": json.dumps(self.concept_ids),
                "tag": tag,
            },
        )

    @classmethod
    def load(cls, path: str | Path, tag: str) -> "AnswerStates | None":
        """Read states written by :meth:`save`; ``None`` if they were computed with another ``tag``."""
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("tag") != tag or "concept_ids" not in meta:  # another run, or states of an older layout
                return None
            return cls(
                f.get_tensor("h"),
                f.get_tensor("no"),
                [tuple(q) for q in json.loads(meta["query_identities"])],
                f.get_tensor("own_tokens"),
                f.get_tensor("own_labels"),
                json.loads(meta["concept_ids"]),
            )


def answer_states_tag(task: AlignerTrainingTask, config: RowFitConfig) -> str:
    """What the answer states depend on: the base LVLM (id and revision), the data source, the queries drawn
    from it, and the Aligner's word and context path (``f_word``, resampler; the output-row conditioning is
    excluded: ``h`` is read before the LM head) — not ``f_weight``, which the fit changes. A sha256 over those."""
    digest = hashlib.sha256(
        json.dumps(
            {
                "base": [task.lvlm.base_model_id, task.lvlm.base_revision],
                "data": task.data.describe(),
                "queries": config.queries,
                "batch": config.batch,
                "first_index": config.first_index,
            },
            sort_keys=True,
        ).encode()
    )
    for name, tensor in sorted(task.aligner.trainable_state_dict().items()):
        if not name.startswith("f_weight.") and name not in ("row_mean", "row_offset"):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def load_or_collect_answer_states(
    task: AlignerTrainingTask, config: RowFitConfig, cache: str | Path, progress: bool = True
) -> AnswerStates:
    """The answer states of :func:`collect_answer_states`, read from ``cache`` if it holds states computed with
    the same :func:`answer_states_tag`, else computed and written there (collecting is the slow part of a fit:
    an LM forward per query)."""
    cache, tag = Path(cache), answer_states_tag(task, config)
    states = AnswerStates.load(cache, tag) if cache.exists() else None
    if states is None:
        states = collect_answer_states(task, config, progress=progress)
        states.save(cache, tag)
    return states


@torch.no_grad()
def collect_answer_states(task: AlignerTrainingTask, config: RowFitConfig, progress: bool = True) -> AnswerStates:
    """``config.queries`` recognition samples of ``task``'s data source → their answer states (current Aligner)."""
    hs, nos, ids, own, labels, concepts = [], [], [], [], [], []
    index = config.first_index
    with tqdm(total=config.queries, desc="answer states", disable=not progress, mininterval=5) as bar:
        while len(ids) < config.queries:
            batch = [
                ex
                for ex in task.data.examples(index, config.batch)
                if ex.kind in RECOGNITION_KINDS and ex.query_identities is not None and ex.concept_id is not None
            ]
            index += 1
            if index - config.first_index > 100 * config.queries:
                raise ValueError("the data source gives no recognition samples with known concept and query identities")
            batch = batch[: config.queries - len(ids)]
            if not batch:
                continue
            z_ref = task.aligner.encode_reference(task.reference_pixels([ex.reference for ex in batch]))
            h, no = task.answer_states(batch, z_ref)
            hs.append(h.cpu())
            nos.append(no.cpu())
            ids += [ex.query_identities for ex in batch]
            own.append(z_ref[:, 0].float().cpu())
            labels += [float(ex.kind == "recog_pos") for ex in batch]
            concepts += [str(ex.concept_id) for ex in batch]
            bar.update(len(batch))
    return AnswerStates(torch.cat(hs), torch.cat(nos), ids, torch.cat(own), torch.tensor(labels), concepts)


def own_pair_objective(
    states: AnswerStates, rows: torch.Tensor, select: torch.Tensor
) -> tuple[torch.Tensor, float | None]:
    """The own-pair term: each selected query's decision ``z_i = h_i · e_weight(own ref_i) − logit_No`` against
    its label, a class-balanced logistic loss, and the ROC AUC of ``z`` pooled over those queries (what the
    evaluation harness measures; ``None`` without both classes).

    ``rows``: ``[N, d]`` output rows of every query's own reference; ``select``: ``[N]`` bool."""
    z = (states.h[select].to(rows) * rows[select]).sum(-1).float() - states.no[select].to(rows.device).float()
    y = states.own_labels[select]
    zd, yd = z.detach().cpu(), y > 0.5
    return balanced_logistic_loss(z, y), roc_auc(zd[yd].tolist(), zd[~yd].tolist())


def fit_output_row(
    task: AlignerTrainingTask, states: AnswerStates, config: RowFitConfig, log: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Fit ``task.aligner.f_weight`` on the identity-bank loss plus ``own_weight`` × the own-pair term over
    ``states``; keep the best held-out epoch.

    A share of the identities is held out of both terms. The epoch kept is the one whose own-pair decisions on
    the queries *about* held-out identities separate positives from negatives best (pooled ROC AUC, as the
    harness scores); the per-query ranking of held-out bank rows is reported too.
    Returns a report: the config, the held-out identities, and per evaluated epoch the fit loss and both held-out
    AUCs (before fitting = epoch 0), with the epoch kept.
    """
    if task.config.answer_style != "name-first":
        raise ValueError("the output row decides only name-first answers: fit it for a name-first Aligner")
    if not task.bank_ids:
        task.build_bank()
    rng = np.random.default_rng([config.seed, 61])
    identities = sorted(set(task.bank_ids))
    n_out = max(1, int(round(config.heldout_identities * len(identities))))
    heldout = {identities[int(i)] for i in rng.choice(len(identities), n_out, replace=False)}
    keep = torch.tensor([bid not in heldout for bid in task.bank_ids])
    y = task.bank_targets(states.query_identities)  # [N, M]
    # held-out scores: the queries that show a held-out identity, ranked over the held-out rows only; and the
    # own-pair decisions of the queries about a held-out identity
    shows = y[:, ~keep].sum(1) > 0
    about = torch.tensor([c in heldout for c in states.concept_ids])
    labels_out = states.own_labels[about]
    if not bool(shows.any()) or not (0 < float(labels_out.sum()) < len(labels_out)):
        raise ValueError("too few cached queries show or ask about a held-out identity: collect more queries")
    params = list(task.aligner.f_weight.parameters())
    for p in task.aligner.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def heldout_aucs() -> dict[str, float]:
        with torch.no_grad():
            rows = task.bank_rows()[~keep]
            z = states.h[shows] @ rows.T.cpu() - states.no[shows][:, None]
            return {
                "heldout_auc": own_pair_objective(states, task.output_rows(states.own_tokens), about)[1],
                "heldout_rank_auc": mean_query_auc(z, y[shows][:, ~keep]),
            }

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in task.aligner.f_weight.state_dict().items()}

    history = [{"epoch": 0, **heldout_aucs()}]
    best = (history[0]["heldout_auc"], 0, snapshot())
    for epoch in range(1, config.epochs + 1):
        optimizer.zero_grad(set_to_none=True)
        evaluate = epoch % config.eval_every == 0 or epoch == config.epochs
        loss, fit_auc = bank_objective(states.h, states.no, task.bank_rows()[keep], y[:, keep], with_auc=evaluate)
        if config.own_weight > 0:
            own, _ = own_pair_objective(states, task.output_rows(states.own_tokens), ~about)
            loss = loss + config.own_weight * own
        loss.backward()
        optimizer.step()
        if evaluate:
            row = {"epoch": epoch, "loss": float(loss.detach()), "fit_auc": fit_auc, **heldout_aucs()}
            history.append(row)
            if log is not None:
                log(
                    f"row fit epoch {epoch}: loss {row['loss']:.4f}, fit rank AUC {fit_auc:.3f}, held-out AUC "
                    f"{row['heldout_auc']:.3f} (own pairs), {row['heldout_rank_auc']:.3f} (rank)"
                )
            if row["heldout_auc"] > best[0]:
                best = (row["heldout_auc"], epoch, snapshot())
    task.aligner.f_weight.load_state_dict(best[2])
    for p in params:
        p.requires_grad_(False)
    return {
        "config": dataclasses.asdict(config),
        "queries": len(states.query_identities),
        "heldout_identities": sorted(heldout),
        "history": history,
        "kept_epoch": best[1],
        "kept_heldout_auc": best[0],
    }


def save_row_fit(
    out_dir: str | Path, task: AlignerTrainingTask, step: int, loop: dict[str, Any], report: dict[str, Any]
) -> Path:
    """``out_dir`` as a checkpoint directory (``trainable.safetensors`` + ``state.json``, no optimizer): what
    ``--aligner-weights`` and ``plvm export`` read; the task description records the fit."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_save(task.trainable_state_dict(), out / "trainable.safetensors", {"step": str(step)})
    state = {"step": step, "loop": loop, "task": {**task.describe(), "row_fit": report}}
    _atomic_write_text(out / "state.json", json.dumps(state, indent=2, sort_keys=True))
    return out
