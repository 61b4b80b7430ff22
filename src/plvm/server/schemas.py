"""Pydantic models of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    detail: Any = Field(description="a one-line message (or FastAPI's validation error list)")


class ConceptOut(BaseModel):
    name: str = Field(description="bare name, e.g. 'bo'")
    token: str = Field(description="as written in questions, e.g. '<bo>'")
    base_model: str
    hidden_size: int
    num_context_tokens: int
    image_sha256: Optional[str] = None
    image_width: Optional[int] = None
    image_height: Optional[int] = None
    created_at: float
    updated_at: float
    feature_kinds: list[str] = []
    face: Optional[dict[str, Any]] = Field(
        None,
        description="main face of the reference: backend, faces_found "
        "(0 = none found), box, score; null without a face "
        "backend",
    )
    image_url: Optional[str] = None

    @classmethod
    def of(cls, record: Any) -> "ConceptOut":
        d = record.to_dict()
        d["image_url"] = f"/api/concepts/{record.name}/image" if record.image_sha256 else None
        d["face"] = dict(record.metadata).get("face")
        return cls(**{k: v for k, v in d.items() if k in cls.model_fields})


class RenameIn(BaseModel):
    name: str = Field(description="the new name ('<' '>' optional)", examples=["bo"])
    replace: bool = False


class InfoOut(BaseModel):
    version: str
    model: str
    base_model: str
    hidden_size: int
    concepts: int
    auth_required: bool
    limits: dict[str, Any]


class MatchOut(BaseModel):
    name: str
    token: str
    score: Optional[float] = Field(
        description="cosine similarity (face embeddings for person concepts, "
        "reference-encoder features otherwise); null when the photo "
        "shows no face to compare with a person concept"
    )
    source: str = Field(description="image | region | face")
    box: Optional[list[int]] = None
    present: bool
    reason: Optional[str] = Field(
        None,
        description="face match | no matching face | no face found | no face "
        "backend | face from another backend | image match | "
        "no image match",
    )
    confidence: Optional[float] = Field(
        None, description="face matches: the backend's calibrated probability of 'same person'"
    )


class IdentifyOut(BaseModel):
    threshold: float
    face_threshold: Optional[float] = None
    num_concepts: int
    regions: list[list[int]] = []
    faces_found: Optional[int] = Field(None, description="faces detected in the photo (null: no face backend)")
    matches: list[MatchOut]
    present: list[str]


class ActiveConceptOut(BaseModel):
    name: str
    token: str
    source: str = Field(description="named | added | requested | identified")
    score: Optional[float] = None


class AnswerOut(BaseModel):
    answer: str
    active_concepts: list[ActiveConceptOut]
    new_concepts: list[str]
    identify: Optional[IdentifyOut] = None
    session_id: Optional[str] = None


class TurnOut(BaseModel):
    role: str
    text: str
    images: int
    introduces: list[str]


class SessionOut(BaseModel):
    session_id: str
    active_concepts: list[ActiveConceptOut]
    turns: list[TurnOut]


class ActivateIn(BaseModel):
    name: str = Field(description="a stored concept to use in this conversation")
