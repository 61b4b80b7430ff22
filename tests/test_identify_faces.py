"""Person concepts are decided by face only (issue 28): never by whole-image or region features.

The image-feature encoder here gives *every* photo the same vector, and every concept stores it, so a
whole-image cosine would say 1.0 — "present" — for every concept on every photo. Any answer for a person
concept that came from those features would therefore be a wrong "present" with source image/region.
"""

from __future__ import annotations

import io
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from plvm.bench.face_real import SameForEveryPhoto
from plvm.eval.methods.identification import FeatureTable
from plvm.identify import REASONS, Identifier


class Faces:
    """A face backend stand-in: returns the faces it is given (box, embedding), whatever the photo."""

    def __init__(self, name: str, faces=(), threshold: float = 0.5, slope: float | None = 20.0):
        self.name = name
        self.faces = list(faces)
        self.threshold = threshold
        self.calibration = None if slope is None else SimpleNamespace(slope=slope)

    def detect_and_embed(self, image):
        return [SimpleNamespace(box=b, score=0.9, embedding=np.asarray(e, np.float32)) for b, e in self.faces]


BO, AL = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
PHOTO = Image.new("RGB", (120, 80), (120, 130, 140))


def table(backend="stub") -> FeatureTable:
    t = FeatureTable()
    same = SameForEveryPhoto()
    t.put("bo", {same.kind: same.features([PHOTO])[0], f"face:{backend}": np.asarray(BO, np.float32)})
    t.put("al", {same.kind: same.features([PHOTO])[0], f"face:{backend}": np.asarray(AL, np.float32)})
    t.put("mug", {same.kind: same.features([PHOTO])[0]})  # no face in its reference: image features decide
    return t


def identify(faces: Faces | None, store=None, **kw):
    ident = Identifier(store or table(), SameForEveryPhoto(), face=faces, threshold=0.6)
    return {m.name: m for m in ident.identify(PHOTO, top_k=None, **kw).matches}


def test_no_face_in_the_query_is_a_negative_with_a_reason_not_an_image_cosine():
    m = identify(Faces("stub", []))
    for person in ("bo", "al"):
        assert m[person].present is False and m[person].source == "face"
        assert m[person].reason == "no face found" and m[person].score is None and m[person].box is None
        assert m[person].to_dict()["reason"] == "no face found" and m[person].to_dict()["score"] is None
    # the mug keeps the image path (the same features give cosine 1)
    assert m["mug"].present and m["mug"].source == "image" and m["mug"].reason == "image match"
    assert m["mug"].score == pytest.approx(1.0)


def test_faces_seen_decide_person_concepts_even_against_perfect_image_features():
    m = identify(Faces("stub", [((10, 10, 50, 50), [0.9, 0.1, 0.0])]), regions=[(0, 0, 60, 60)])
    assert m["bo"].present and m["bo"].source == "face" and m["bo"].reason == "face match"
    assert m["bo"].box == (10, 10, 50, 50) and 0.5 < m["bo"].confidence <= 1.0
    assert not m["al"].present and m["al"].source == "face" and m["al"].reason == "no matching face"
    assert m["al"].score == pytest.approx(0.1 / np.hypot(0.9, 0.1), abs=1e-5) and m["al"].confidence < 0.5
    assert m["mug"].present and m["mug"].source in ("image", "region")


def test_a_concept_without_a_face_is_still_image_matched_when_people_outnumber_the_image_rows():
    t = FeatureTable()
    same = SameForEveryPhoto()
    for name, emb in (("bo", BO), ("al", AL), ("cy", [0.0, 0.0, 1.0])):
        t.put(name, {"face:stub": np.asarray(emb, np.float32)})  # people without image features at all
    t.put("mug", {same.kind: same.features([PHOTO])[0]})
    m = identify(Faces("stub", []), store=t)
    assert m["mug"].present and m["mug"].source == "image"
    assert {m[n].reason for n in ("bo", "al", "cy")} == {"no face found"}


def test_without_the_backend_that_embedded_the_reference_person_concepts_are_never_image_matched():
    no_backend = identify(None)
    other = identify(Faces("other", [((10, 10, 50, 50), BO)]))
    for m in (no_backend, other):
        assert not m["bo"].present and not m["al"].present and m["mug"].present
    assert no_backend["bo"].reason == "no face backend"
    assert other["bo"].reason == "face from another backend" and other["bo"].score is None


@pytest.mark.parametrize("seed", range(5))
def test_no_person_answer_ever_comes_from_image_or_region_features(seed):
    """Random faces, regions and top_k: every answer about bo/al has source 'face' and a face reason."""
    rng = np.random.default_rng(seed)
    faces = [((int(x), 5, int(x) + 30, 35), rng.normal(size=3)) for x in rng.integers(0, 80, rng.integers(0, 4))]
    ident = Identifier(table(), SameForEveryPhoto(), face=Faces("stub", faces), threshold=0.6)
    result = ident.identify(PHOTO, regions=[(0, 0, 40, 40), (50, 10, 110, 70)], top_k=int(rng.integers(1, 4)))
    for m in result.matches:
        assert m.reason in REASONS
        if m.name in ("bo", "al"):
            assert m.source == "face" and m.reason in ("face match", "no matching face", "no face found")
            assert m.present == (m.reason == "face match")
    assert result.faces_found == len(faces)


def test_store_concepts_with_faces_stay_faces(tmp_path):
    """The same through a real ConceptStore (feature kinds listed by the store)."""
    from plvm.identify import ReferenceEncoder
    from plvm.models.tiny_plvm import tiny_plvm
    from plvm.store import ConceptStore, StoreIdentity

    plvm = tiny_plvm()
    store = ConceptStore(tmp_path, StoreIdentity.of(plvm))
    buf = io.BytesIO()
    PHOTO.save(buf, "PNG")
    store.add_from_image("bo", buf.getvalue(), ReferenceEncoder(plvm, face=Faces("stub", [((0, 0, 40, 40), BO)])))
    store.add_from_image("mug", buf.getvalue(), ReferenceEncoder(plvm, face=Faces("stub", [])))
    ident = Identifier(store, ReferenceEncoder(plvm), face=Faces("stub", []), threshold=-1.0)  # image: always
    m = {x.name: x for x in ident.identify(PHOTO, top_k=None).matches}
    assert m["bo"].reason == "no face found" and not m["bo"].present
    assert m["mug"].present and m["mug"].source == "image"  # the same photo: its own reference
    ident = Identifier(store, ReferenceEncoder(plvm), face=None, threshold=-1.0)
    assert {x.name: x.reason for x in ident.identify(PHOTO, top_k=None).matches}["bo"] == "no face backend"


def test_http_identify_shows_the_reason(tmp_path):
    from fastapi.testclient import TestClient

    from plvm.models.tiny_plvm import tiny_plvm
    from plvm.server import ServerLimits, create_app
    from plvm.store import ConceptStore, StoreIdentity

    plvm = tiny_plvm()
    store = ConceptStore(tmp_path, StoreIdentity.of(plvm))
    backend = Faces("stub", [((0, 0, 20, 20), BO)])
    client = TestClient(
        create_app(plvm, store, limits=ServerLimits(), threshold=-1.0, face=backend), base_url="http://127.0.0.1"
    )
    buf = io.BytesIO()
    PHOTO.save(buf, "PNG")
    r = client.post("/api/concepts", data={"name": "bo"}, files={"image": ("bo.png", buf.getvalue(), "image/png")})
    assert r.status_code in (200, 201), r.text
    backend.faces = []  # the next photo shows no face
    out = client.post("/api/identify", files={"image": ("q.png", buf.getvalue(), "image/png")}).json()
    assert out["faces_found"] == 0 and out["present"] == []
    assert out["matches"] == [
        {
            "name": "bo",
            "token": "<bo>",
            "score": None,
            "source": "face",
            "box": None,
            "present": False,
            "reason": "no face found",
            "confidence": None,
        }
    ]
    backend.faces = [((0, 0, 20, 20), BO)]
    out = client.post("/api/identify", files={"image": ("q.png", buf.getvalue(), "image/png")}).json()
    assert out["present"] == ["bo"] and out["matches"][0]["reason"] == "face match"
    assert out["matches"][0]["confidence"] == pytest.approx(1 / (1 + np.exp(-20 * 0.5)), abs=1e-4)


def test_cli_identify_shows_no_face_found_and_confidence(tmp_path, monkeypatch):
    """``plvm identify`` with the default (dlib) backend on real photos shipped by installed packages."""
    import typer
    from typer.testing import CliRunner

    from plvm.bench.face_photos import missing_sources, real_photos
    from plvm.cli.product import register
    from plvm.encoders.face import FaceBackendUnavailable, FaceConfig, FaceEncoder

    try:
        FaceEncoder.from_config(FaceConfig(backend="dlib"))
    except FaceBackendUnavailable as exc:
        pytest.skip(f"dlib backend unavailable: {exc}")
    if missing_sources(["grace_hopper", "brick"]):
        pytest.skip(f"real photos missing: {missing_sources(['grace_hopper', 'brick'])}")
    photos = real_photos()
    ref, faceless = tmp_path / "hopper.jpg", tmp_path / "brick.png"
    shutil.copy(photos["grace_hopper"].path, ref)  # a temporary copy of the installed file, for the CLI
    shutil.copy(photos["brick"].path, faceless)
    monkeypatch.setenv("PLVM_FACE_BACKEND", "dlib")
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    store = tmp_path / "store"

    def cli(*args):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    r = cli("concepts", "add", "hopper", ref, "--model", "tiny", "--store", store, "--faces")
    assert r.exit_code == 0 and "main face" in r.stdout, r.stdout + r.stderr
    r = cli("identify", "--image", faceless, "--model", "tiny", "--store", store, "--faces")
    assert r.exit_code == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("<hopper>"))
    assert "no face found" in row and " no " in row and "nobody known" in r.stdout
    r = cli("identify", "--image", ref, "--model", "tiny", "--store", store, "--faces", "--json")
    match = json.loads(r.stdout)["matches"][0]
    assert match["name"] == "hopper" and match["present"] and match["reason"] == "face match"
    assert match["confidence"] > 0.99
    r = cli("identify", "--image", ref, "--model", "tiny", "--store", store, "--faces")
    row = next(line for line in r.stdout.splitlines() if line.startswith("<hopper>"))
    assert "face match" in row and "%" in row and " yes " in row
