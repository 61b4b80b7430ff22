"""Size and length limits of the HTTP API."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..images import ImageLimits


@dataclass(frozen=True)
class ServerLimits:
    """Limits enforced by :func:`plvm.server.create_app`.

    Attributes:
        max_request_bytes: Largest request body; larger ones get 413 before they are read.
        image: Per-image limits (bytes, pixels, side) — 413 when exceeded.
        max_question_chars: Longest question (422 beyond).
        max_new_tokens: Longest answer in tokens.
        max_sessions: Chat sessions kept in memory (least recently used ones are dropped).
        max_boxes: Most regions one identify request may give.
        max_import_bytes: Largest concept file accepted by ``/api/concepts/import``.
        max_decoded_pixels: Decoded pixels all requests together may hold at once (uploads reserve
            ``width × height`` before decoding and wait for room: memory stays flat under concurrent large
            uploads; :class:`plvm.server.guard.PixelBudget`).
    """

    max_request_bytes: int = 24 * 1024 * 1024
    image: ImageLimits = field(default_factory=ImageLimits)
    max_question_chars: int = 2000
    max_new_tokens: int = 128
    max_sessions: int = 64
    max_boxes: int = 32
    max_import_bytes: int = 24 * 1024 * 1024
    max_decoded_pixels: int = 40_000_000
