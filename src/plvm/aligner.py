"""The Aligner of PLVM (§3.1): one reference image → a concept's embeddings, in one forward pass.

A frozen reference encoder (DINOv2) turns the reference image into ``z_ref`` of shape ``[B, L, d_enc]``
(L = 1 + (S/14)² tokens: the global CLS token and the patch tokens; 257 at 224 px). Then

* ``f_word``   — a 3-layer MLP with GELU on ``z_ref[:, 0]`` → ``e_word``   ``[B, d_llm]``, the input
  word embedding of the concept's name token ``<sks>``;
* ``f_weight`` — a 3-layer MLP with GELU on ``z_ref[:, 0]`` → ``e_weight`` ``[B, d_llm]``, the concept's
  extra row of the LM head, so the model can *say* ``<sks>``;
* ``resampler`` — a small cross-attention transformer: ``k`` learnable queries attend over the patch
  tokens ``z_ref[:, 1:]`` through ``N`` blocks of width ``h`` → ``[B, k, d_llm]``, the context tokens
  ``<t1>…<tk>`` of the prompt ``<sks> is <t1>…<tk>.``

Only the MLPs and the resampler (with its queries) are trained; the encoder stays frozen.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .calibration import fold_standardisation, rescale_output
from .concept import ConceptEmbedding
from .config import AlignerConfig

ReferenceEncoder = Callable[[torch.Tensor], torch.Tensor]
"""Maps pixel values ``[B, 3, S, S]`` to ``z_ref`` ``[B, L, d_enc]`` (CLS first)."""


class ConceptMLP(nn.Module):
    """``f_word`` / ``f_weight``: Linear → GELU → Linear → GELU → Linear, ``[B, d_enc] → [B, d_llm]``."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, d_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResamplerBlock(nn.Module):
    """One pre-norm cross-attention block: queries attend to ``[patches; queries]``, then an MLP.

    Shapes: ``latents`` ``[B, k, h]``, ``context`` ``[B, L-1, h]`` → ``[B, k, h]``.
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm_latents = nn.LayerNorm(hidden)
        self.norm_context = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp_ratio * hidden),
            nn.GELU(),
            nn.Linear(mlp_ratio * hidden, hidden),
        )

    def forward(self, latents: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self.norm_latents(latents)
        kv = torch.cat([self.norm_context(context), q], dim=1)
        attended, _ = self.attn(q, kv, kv, need_weights=False)
        latents = latents + attended
        return latents + self.mlp(self.norm_mlp(latents))


class CrossAttentionResampler(nn.Module):
    """``k`` learnable queries → ``N`` :class:`ResamplerBlock` over the patch tokens → ``[B, k, d_llm]``."""

    def __init__(self, d_enc: int, hidden: int, d_out: int, num_queries: int, num_blocks: int, heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, hidden) * hidden**-0.5)
        self.proj_in = nn.Linear(d_enc, hidden)
        self.blocks = nn.ModuleList(ResamplerBlock(hidden, heads) for _ in range(num_blocks))
        self.norm_out = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, d_out)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``patches`` ``[B, L-1, d_enc]`` → context embeddings ``[B, k, d_llm]``."""
        context = self.proj_in(patches)
        latents = self.queries.unsqueeze(0).expand(patches.shape[0], -1, -1)
        for block in self.blocks:
            latents = block(latents, context)
        return self.proj_out(self.norm_out(latents))


class Aligner(nn.Module):
    """The PLVM Aligner: frozen reference encoder + ``f_word`` + ``f_weight`` + cross-attention resampler.

    Args:
        config: Sizes (see :class:`~plvm.config.AlignerConfig` and its presets).
        encoder: The frozen reference encoder — a ``transformers.Dinov2Model`` (or any module whose output
            has ``last_hidden_state`` ``[B, L, d_enc]``, CLS first). ``None`` builds no encoder; then
            :meth:`forward` must be given ``z_ref`` directly (useful for training on cached features).

    The encoder is registered as a submodule so that ``.to(device)`` moves it, but it is frozen
    (``requires_grad=False``, always run in eval mode under ``torch.no_grad``) and excluded from
    :meth:`trainable_state_dict`.
    """

    def __init__(self, config: AlignerConfig, encoder: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder
        if encoder is not None:
            encoder.requires_grad_(False)
            encoder.eval()
        self.f_word = ConceptMLP(config.d_enc, config.mlp_hidden, config.d_llm)
        self.f_weight = ConceptMLP(config.d_enc, config.mlp_hidden, config.d_llm)
        self.resampler = CrossAttentionResampler(
            d_enc=config.d_enc,
            hidden=config.resampler_hidden,
            d_out=config.d_llm,
            num_queries=config.num_queries,
            num_blocks=config.resampler_blocks,
            heads=config.resampler_heads,
        )

    # ------------------------------------------------------------------ encoder
    def train(self, mode: bool = True) -> "Aligner":
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # frozen: dropout etc. never active
        return self

    @torch.no_grad()
    def encode_reference(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen encoder: ``pixel_values`` ``[B, 3, S, S]`` → ``z_ref`` ``[B, 1 + (S/p)², d_enc]``."""
        if self.encoder is None:
            raise RuntimeError("this Aligner was built without a reference encoder; pass z_ref instead")
        param = next(self.encoder.parameters())
        out = self.encoder(pixel_values=pixel_values.to(device=param.device, dtype=param.dtype))
        z_ref = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
        if z_ref.shape[-1] != self.config.d_enc:
            raise ValueError(f"encoder gives width {z_ref.shape[-1]}, config.d_enc is {self.config.d_enc}")
        return z_ref

    @torch.no_grad()
    def calibrate(self, pixel_values: torch.Tensor, word_norm: float, weight_norm: float) -> dict[str, float]:
        """Data-dependent init of a fresh Aligner (not in the paper; the same two steps as LLaVA-mini's
        projector, :func:`plvm.models.llava_mini.assembly.calibrate_projector`):

        1. standardise the inputs: per-channel mean/std of the CLS token (for ``f_word`` / ``f_weight``) and
           of the patch tokens (for the resampler's ``proj_in``) over these references, folded exactly into
           those first linear layers — DINOv2 tokens share a large common component that otherwise makes
           every reference look alike to a random MLP;
        2. rescale the last layers so that the mean L2 norm of ``e_word`` and of each context token is
           ``word_norm`` (the base LM's mean input-embedding norm) and that of ``e_weight`` is
           ``weight_norm`` (its mean LM-head row norm) — default init gives outputs several times longer
           than the LM's own embeddings, a fresh ``<sks>`` logit row then dominates the vocabulary.

        Args:
            pixel_values: ``[B, 3, S, S]`` reference images for the encoder (B ≥ 2).

        Returns:
            The output factors per module (``f_word``, ``f_weight``, ``resampler``).
        """
        z_ref = self.encode_reference(pixel_values).float()
        fold_standardisation(self.f_word.net[0], z_ref[:, 0])
        fold_standardisation(self.f_weight.net[0], z_ref[:, 0])
        fold_standardisation(self.resampler.proj_in, z_ref[:, 1:].reshape(-1, z_ref.shape[-1]))
        e_word, e_weight, context = self(z_ref=z_ref.to(next(self.f_word.parameters()).dtype))
        return {
            "f_word": rescale_output(self.f_word.net[-1], e_word, word_norm),
            "f_weight": rescale_output(self.f_weight.net[-1], e_weight, weight_norm),
            "resampler": rescale_output(self.resampler.proj_out, context, word_norm),
        }

    # ------------------------------------------------------------------ forward
    def forward(
        self, pixel_values: torch.Tensor | None = None, z_ref: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Map reference images (or their features) to concept embeddings.

        Args:
            pixel_values: ``[B, 3, S, S]`` normalised reference images, or
            z_ref: ``[B, L, d_enc]`` precomputed encoder output (CLS first).

        Returns:
            ``(e_word [B, d_llm], e_weight [B, d_llm], context [B, k, d_llm])``.
        """
        if (pixel_values is None) == (z_ref is None):
            raise ValueError("pass exactly one of pixel_values or z_ref")
        if z_ref is None:
            z_ref = self.encode_reference(pixel_values)
        dtype = self.f_word.net[0].weight.dtype
        z_ref = z_ref.to(dtype)
        global_token, patches = z_ref[:, 0], z_ref[:, 1:]
        return self.f_word(global_token), self.f_weight(global_token), self.resampler(patches)

    @torch.no_grad()
    def make_concepts(
        self,
        names: Sequence[str],
        pixel_values: torch.Tensor | None = None,
        z_ref: torch.Tensor | None = None,
    ) -> list[ConceptEmbedding]:
        """Encode one reference image per name into :class:`ConceptEmbedding` records (inference)."""
        e_word, e_weight, context = self(pixel_values=pixel_values, z_ref=z_ref)
        if len(names) != e_word.shape[0]:
            raise ValueError(f"{len(names)} names for {e_word.shape[0]} reference images")
        return [
            ConceptEmbedding(
                name=name,
                e_word=e_word[i].float().cpu(),
                e_weight=e_weight[i].float().cpu(),
                context=context[i].float().cpu(),
                base_model=self.config.base_model,
            )
            for i, name in enumerate(names)
        ]

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters PLVM trains: ``f_word``, ``f_weight`` and the resampler (with its queries)."""
        return [p for m in (self.f_word, self.f_weight, self.resampler) for p in m.parameters()]

    def num_trainable_parameters(self) -> dict[str, int]:
        """Parameter counts per trainable part and in total (works on the meta device too)."""
        counts = {
            name: sum(p.numel() for p in getattr(self, name).parameters())
            for name in ("f_word", "f_weight", "resampler")
        }
        counts["total"] = sum(counts.values())
        return counts

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the frozen encoder (what a checkpoint stores)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`trainable_state_dict`; shapes must match exactly."""
        own = self.trainable_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"aligner checkpoint mismatch: missing={missing[:5]} unexpected={unexpected[:5]}")
        for key, value in state.items():
            if own[key].shape != value.shape:
                raise ValueError(
                    f"aligner checkpoint tensor {key} has shape {tuple(value.shape)}, "
                    f"this Aligner expects {tuple(own[key].shape)} (config {self.config.base_model})"
                )
        self.load_state_dict(state, strict=False)
