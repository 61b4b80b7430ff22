"""The HTTP API (plvm.server) on the tiny model: happy paths, error codes, limits, auth."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from plvm.images import ImageLimits
from plvm.models.tiny_plvm import tiny_plvm
from plvm.server import BindError, ServerLimits, check_bind, create_app, is_loopback_host
from plvm.store import ConceptStore, StoreIdentity, StoreMismatchError

LIMITS = ServerLimits(
    max_request_bytes=300_000,
    image=ImageLimits(max_bytes=200_000, max_pixels=250_000),
    max_new_tokens=6,
    max_question_chars=300,
)


def png(seed: int, size=(48, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def plvm():
    return tiny_plvm()


@pytest.fixture()
def store(tmp_path, plvm):
    return ConceptStore(tmp_path / "store", StoreIdentity.of(plvm))


@pytest.fixture()
def client(plvm, store):
    # the tiny random encoder finds every photo alike (cosine ~0.95): only the same photo passes 0.999
    return TestClient(create_app(plvm, store, limits=LIMITS, threshold=0.999), base_url="http://127.0.0.1")


def add(client, name, seed=1, **extra):
    return client.post(
        "/api/concepts", data={"name": name, **extra}, files={"image": ("ref.png", png(seed), "image/png")}
    )


def test_info_openapi_and_page(client):
    info = client.get("/api/info").json()
    assert info["base_model"] == "tiny" and info["concepts"] == 0 and info["auth_required"] is False
    schema = client.get("/openapi.json").json()
    for path in ("/api/concepts", "/api/concepts/{name}", "/api/identify", "/api/ask", "/api/chats/{sid}/messages"):
        assert path in schema["paths"], path
    assert client.get("/docs").status_code == 404  # no CDN-backed Swagger UI
    page = client.get("/")
    assert page.status_code == 200 and "<title>plvm" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/%2e%2e/app.py").status_code == 404


def test_concept_lifecycle(client, store):
    r = add(client, "<bo>")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "bo" and body["token"] == "<bo>" and body["image_width"] == 48
    assert store.names() == ["bo"]  # the state is in the store
    assert [c["name"] for c in client.get("/api/concepts").json()] == ["bo"]
    assert client.get("/api/concepts/bo").json()["image_sha256"] == body["image_sha256"]
    image = client.get(body["image_url"])
    assert image.status_code == 200 and image.content == png(1) and image.headers["content-type"] == "image/png"
    assert add(client, "bo", seed=2, replace="true").status_code == 201
    r = client.patch("/api/concepts/bo", json={"name": "<bob>"})
    assert r.status_code == 200 and r.json()["name"] == "bob" and store.names() == ["bob"]
    exported = client.get("/api/concepts/bob/export")
    assert exported.status_code == 200 and "bob.concept.safetensors" in exported.headers["content-disposition"]
    assert client.delete("/api/concepts/bob").status_code == 204 and store.names() == []
    assert client.get("/api/concepts/bob").status_code == 404
    r = client.post(
        "/api/concepts/import",
        data={"name": "bo2"},
        files={"file": ("x.safetensors", exported.content, "application/octet-stream")},
    )
    assert r.status_code == 201 and r.json()["name"] == "bo2" and store.names() == ["bo2"]


def test_concept_errors(client):
    assert add(client, "bo").status_code == 201
    r = add(client, "bo")
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    r = add(client, "../etc")
    assert r.status_code == 422 and "invalid concept name" in r.json()["detail"]
    r = client.post("/api/concepts", data={"name": "x"}, files={"image": ("a.txt", b"hello world", "text/plain")})
    assert r.status_code == 415 and "not an image" in r.json()["detail"]
    r = client.post("/api/concepts", data={"name": "x"}, files={"image": ("t.png", png(3)[:2000], "image/png")})
    assert r.status_code == 422 and "truncated" in r.json()["detail"]
    r = client.post("/api/concepts", data={"name": "x"}, files={"image": ("big.png", png(4, (600, 600)), "image/png")})
    assert r.status_code == 413 and "detail" in r.json()  # the body limit (300 kB) or the pixel limit
    mid = png(6, (290, 290))  # under the 300 kB body limit, over the 200 kB image limit
    assert 200_000 < len(mid) < 290_000
    r = client.post("/api/concepts", data={"name": "x"}, files={"image": ("mid.png", mid, "image/png")})
    assert r.status_code == 413 and "mid.png is larger than the limit" in r.json()["detail"]
    r = client.get("/api/concepts/zz")
    assert r.status_code == 404 and r.json()["detail"] == "unknown concept <zz>; stored concepts: <bo>"
    assert client.patch("/api/concepts/bo", json={"name": "a b"}).status_code == 422
    assert client.delete("/api/concepts/zz").status_code == 404
    assert client.post("/api/concepts", data={"name": "x"}).status_code == 422  # no image field
    r = client.post("/api/concepts/import", files={"file": ("x.safetensors", b"junk" * 10, "application/octet-stream")})
    assert r.status_code == 422


def test_pixel_limit_is_413_even_when_the_file_is_small(client):
    buf = io.BytesIO()
    Image.new("L", (1000, 1000)).save(buf, "PNG")  # 1 megapixel of zeros: a few kB
    assert len(buf.getvalue()) < 10_000
    r = client.post("/api/identify", files={"image": ("z.png", buf.getvalue(), "image/png")})
    assert r.status_code == 413 and "megapixels" in r.json()["detail"]


def test_request_body_limit_without_content_length(client):
    def chunks():
        for _ in range(40):
            yield b"x" * 10_000

    r = client.post("/api/concepts", content=chunks(), headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413 and "too large" in r.json()["detail"]


def test_identify(client):
    add(client, "bo", seed=1)
    add(client, "mo", seed=2)
    r = client.post("/api/identify", files={"image": ("q.png", png(2), "image/png")}, data={"threshold": "0.999"})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["matches"][0]["name"] == "mo" and result["matches"][0]["present"] and result["present"] == ["mo"]
    assert result["num_concepts"] == 2 and {m["name"] for m in result["matches"]} == {"bo", "mo"}
    r = client.post(
        "/api/identify", files={"image": ("q.png", png(2), "image/png")}, data={"boxes": json.dumps([[0, 0, 24, 24]])}
    )
    assert r.status_code == 200 and r.json()["regions"] == [[0, 0, 24, 24]]
    r = client.post("/api/identify", files={"image": ("q.png", png(2), "image/png")}, data={"boxes": "[1,2]"})
    assert r.status_code == 422


def test_ask_plain_and_streamed(client):
    add(client, "bo", seed=1)
    r = client.post(
        "/api/ask",
        data={"question": "Is <bo> in this photo?", "auto_identify": "false"},
        files={"image": ("q.png", png(9), "image/png")},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert isinstance(out["answer"], str)
    assert out["active_concepts"] == [{"name": "bo", "token": "<bo>", "source": "named", "score": None}]
    r = client.post(
        "/api/ask",
        data={"question": "Who is in this photo?", "stream": "true"},
        files={"image": ("q.png", png(1), "image/png")},
    )  # the reference photo itself
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    assert [a["name"] for a in events[0]["active_concepts"]] == ["bo"]
    assert events[0]["active_concepts"][0]["source"] == "identified"
    assert "".join(e["text"] for e in events if e["event"] == "text").strip() == events[-1]["answer"]


def test_ask_with_faces_and_visual_prompt(plvm, store):
    from types import SimpleNamespace

    class OneFace:  # a face backend stand-in: one face on the left, embedding = the photo's mean colour
        name = "oneface"
        threshold = 0.99

        def detect_and_embed(self, image):
            arr = np.asarray(image.convert("RGB"), dtype=np.float32)
            return [SimpleNamespace(box=(0, 0, 10, 10), score=1.0, embedding=arr.mean((0, 1)) - 127.0)]

    client = TestClient(
        create_app(plvm, store, limits=LIMITS, threshold=2.0, face=OneFace()), base_url="http://127.0.0.1"
    )
    added = add(client, "bo", seed=1).json()
    assert added["face"]["faces_found"] == 1 and "face:oneface" in added["feature_kinds"]
    r = client.post(
        "/api/ask",
        data={"question": "Who is in this photo?", "visual_prompt": "true"},
        files={"image": ("q.png", png(1), "image/png")},
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["identify"]["present"] == ["bo"] and out["identify"]["matches"][0]["source"] == "face"
    assert out["active_concepts"][0]["source"] == "identified"


def test_ask_errors(client):
    add(client, "bo")
    r = client.post("/api/ask", data={"question": "Is <zz> here?"})
    assert r.status_code == 404 and r.json()["detail"] == "unknown concept <zz>; known concepts: <bo>"
    r = client.post("/api/ask", data={"question": "   "})
    assert r.status_code == 422 and "empty question" in r.json()["detail"]
    r = client.post("/api/ask", data={"question": "x" * 301})
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    r = client.post("/api/ask", data={"question": "hi", "concepts": "bo, zz"})
    assert r.status_code == 404
    r = client.post("/api/ask", data={"question": "hi"}, files={"image": ("q.png", b"GIF89a-broken", "image/gif")})
    assert r.status_code in (415, 422)


def test_chat_session_keeps_history_and_concepts(client):
    add(client, "bo", seed=1)
    sid = client.post("/api/chats").json()["session_id"]
    r = client.post(
        f"/api/chats/{sid}/messages",
        data={"text": "Describe the photo."},
        files={"image": ("q.png", png(7), "image/png")},
    )
    assert r.status_code == 200 and r.json()["session_id"] == sid
    r = client.post(f"/api/chats/{sid}/messages", data={"text": "Is <bo> there?", "stream": "true"})
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events[-1]["event"] == "done" and "bo" in [a["name"] for a in events[-1]["active_concepts"]]
    add(client, "mo", seed=2)  # added mid-conversation, then used
    r = client.post(f"/api/chats/{sid}/concepts", json={"name": "<mo>"})
    assert r.status_code == 200 and [a["name"] for a in r.json()["active_concepts"]] == ["bo", "mo"]
    client.post(f"/api/chats/{sid}/messages", data={"text": "And <mo>?"})
    history = client.get(f"/api/chats/{sid}").json()
    assert [t["role"] for t in history["turns"]] == ["user", "assistant"] * 3
    assert history["turns"][0]["images"] == 1 and history["turns"][2]["introduces"] == ["bo"]
    assert history["turns"][4]["introduces"] == ["mo"]
    r = client.post(f"/api/chats/{sid}/messages", data={"text": "<nobody>?"})
    assert r.status_code == 404 and "<bo>" in r.json()["detail"]
    assert len(client.get(f"/api/chats/{sid}").json()["turns"]) == 6  # a failed turn leaves no trace
    assert client.delete(f"/api/chats/{sid}").status_code == 204
    assert client.post(f"/api/chats/{sid}/messages", data={"text": "hi"}).status_code == 404


def test_token_auth(plvm, store):
    client = TestClient(create_app(plvm, store, token="s3cret", limits=LIMITS), base_url="http://127.0.0.1")
    assert client.get("/api/info").status_code == 401
    r = client.get("/api/concepts", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["detail"]
    assert client.post("/api/ask", data={"question": "hi"}).status_code == 401
    ok = client.get("/api/info", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.json()["auth_required"] is True
    assert client.get("/").status_code == 200  # the page itself holds no data; it asks for the token
    assert "HTTPBearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]


def test_bind_rules():
    for host in ("127.0.0.1", "127.3.4.5", "localhost", "::1", "[::1]"):
        assert is_loopback_host(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        assert not is_loopback_host(host)
        with pytest.raises(BindError, match="--token"):
            check_bind(host, None)
        check_bind(host, "tok")


def test_app_refuses_a_store_of_another_base_model(tmp_path, plvm):
    ConceptStore(tmp_path / "s", StoreIdentity("plvm/llava-mini", 576)).close()
    with pytest.raises(StoreMismatchError, match="made for base model 'plvm/llava-mini'"):
        create_app(plvm, ConceptStore(tmp_path / "s"))
