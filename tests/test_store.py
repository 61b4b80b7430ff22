"""The concept store: concurrency, names, path safety, base-model binding, export/import, identify."""

from __future__ import annotations

import io
import multiprocessing as mp
import sqlite3

import numpy as np
import pytest
import torch
from PIL import Image

from plvm.concept import ConceptEmbedding, ConceptError, normalize_name
from plvm.identify import Identifier, ReferenceEncoder
from plvm.images import decode_image
from plvm.models.tiny_plvm import tiny_plvm
from plvm.store import (
    ConceptExistsError,
    ConceptNotFoundError,
    ConceptStore,
    NewConcept,
    StoreIdentity,
    StoreMismatchError,
)

TINY = StoreIdentity("tiny", 64)


def fake_concept(name: str, seed: int = 0, base: str = "tiny", d: int = 64, k: int = 4) -> ConceptEmbedding:
    g = torch.Generator().manual_seed(seed)
    return ConceptEmbedding(
        name, torch.randn(d, generator=g), torch.randn(d, generator=g), torch.randn(k, d, generator=g), base
    )


def png(seed: int, size=(48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _writer(root: str, prefix: str, n: int, start, results) -> None:
    """Child process: add n concepts (tensors made with numpy: no torch kernels after fork), race for a name."""

    def concept(name: str, seed: int) -> ConceptEmbedding:
        rng = np.random.default_rng(seed)
        t = lambda *shape: torch.from_numpy(rng.standard_normal(shape).astype(np.float32))  # noqa: E731
        return ConceptEmbedding(name, t(64), t(64), t(4, 64), "tiny")

    store = ConceptStore(root, TINY)
    start.wait(timeout=60)
    for i in range(n):
        store.add(concept(f"{prefix}{i}", i), decode_image(png(i % 3)), {"f": np.ones(8, np.float32)})
    try:
        store.add(concept("shared", 99))
        results.put((prefix, "won"))
    except ConceptExistsError:
        results.put((prefix, "lost"))
    store.close()


@pytest.fixture(scope="module")
def plvm():
    return tiny_plvm()


# ---------------------------------------------------------------------- concurrency
def test_two_processes_adding_at_once_lose_nothing(tmp_path):
    root = str(tmp_path / "store")
    ConceptStore(root, TINY).close()
    ctx = mp.get_context("fork")  # separate processes, separate SQLite connections and file locks
    results, start = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_writer, args=(root, p, 40, start, results)) for p in ("a", "b")]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    outcomes = sorted(results.get(timeout=5)[1] for _ in procs)
    assert outcomes == ["lost", "won"]  # exactly one process got the contested name
    store = ConceptStore(root, TINY)
    names = store.names()
    assert len(names) == 81 and {f"{p}{i}" for p in "ab" for i in range(40)} <= set(names) and "shared" in names
    for n in names:
        assert store.load(n).name == n  # every row has its file
    files = sorted(p.stem for p in (tmp_path / "store" / "concepts").iterdir() if not p.name.startswith("."))
    assert files == sorted(r.id for r in store.list())  # and no orphan files
    assert len(list((tmp_path / "store" / "images").iterdir())) == 3  # content-addressed, shared
    assert len(store.feature_matrix("f")) == 80


# ---------------------------------------------------------------------- names
@pytest.mark.parametrize("raw,bare", [("bo", "bo"), ("<bo>", "bo"), (" <my-dog_2> ", "my-dog_2")])
def test_valid_names(raw, bare):
    assert normalize_name(raw) == bare


@pytest.mark.parametrize("raw", ["", "<>", "a b", "../x", "a/b", "..", "bo\x00", "<image>", "é", "x" * 65, "<bo"])
def test_invalid_names_are_refused(tmp_path, raw):
    store = ConceptStore(tmp_path, TINY)
    with pytest.raises(ConceptError):
        store.check_available(raw)
    with pytest.raises(ConceptError):
        fake_concept(raw)


def test_collisions_need_replace_and_are_case_insensitive(tmp_path):
    store = ConceptStore(tmp_path, TINY)
    first = store.add(fake_concept("bo", 1), decode_image(png(1)))
    with pytest.raises(ConceptExistsError, match="--replace"):
        store.add(fake_concept("bo", 2))
    with pytest.raises(ConceptExistsError, match="ignoring case"):
        store.add(fake_concept("Bo", 2))
    with pytest.raises(ConceptExistsError):
        store.check_available("<bo>")
    second = store.add(fake_concept("bo", 2), decode_image(png(2)), replace=True)
    assert second.id != first.id and second.created_at == first.created_at
    assert torch.equal(store.load("bo").e_word, fake_concept("bo", 2).e_word)
    assert sorted(p.stem for p in (tmp_path / "images").iterdir()) == [second.image_sha256]  # old image gone
    assert len(list((tmp_path / "concepts").glob("*.safetensors"))) == 1


def test_unknown_names_list_the_known_ones(tmp_path):
    store = ConceptStore(tmp_path, TINY)
    for n in ("bo", "mo"):
        store.add(fake_concept(n))
    with pytest.raises(ConceptNotFoundError, match=r"unknown concept <zz>; stored concepts: <bo>, <mo>"):
        store.load("zz")
    assert "<bo>" in store and "zz" not in store and "../x" not in store


def test_rename_and_remove(tmp_path):
    store = ConceptStore(tmp_path, TINY)
    store.add(fake_concept("bo", 1), decode_image(png(1)))
    store.add(fake_concept("mo", 2), decode_image(png(1)))  # same photo: one image file
    assert store.rename("<bo>", "<bob>").name == "bob"
    assert store.load("bob").name == "bob" and "bo" not in store
    with pytest.raises(ConceptExistsError):
        store.rename("bob", "MO")
    with pytest.raises(ConceptError):
        store.rename("bob", "../../etc/passwd")
    store.remove("bob")
    assert len(list((tmp_path / "images").iterdir())) == 1  # still used by <mo>
    store.remove("mo")
    assert list((tmp_path / "images").iterdir()) == [] and list((tmp_path / "concepts").glob("*")) == []
    with pytest.raises(ConceptNotFoundError):
        store.remove("mo")


# ---------------------------------------------------------------------- path safety
def test_paths_never_come_from_names_or_the_index(tmp_path):
    store = ConceptStore(tmp_path / "s", TINY)
    record = store.add(fake_concept("bo"), decode_image(png(0)))
    for f in (tmp_path / "s").rglob("*"):
        assert "bo" not in f.name  # files are named by random id / content hash
    db = sqlite3.connect(tmp_path / "s" / "index.sqlite")
    db.execute("UPDATE concepts SET id = '../../evil', image_sha256 = '../../../etc/passwd' WHERE name = 'bo'")
    db.commit()
    db.close()
    with pytest.raises(Exception, match="corrupt store index"):
        store.load("bo")
    with pytest.raises(Exception, match="corrupt store index"):
        store.image_file("bo")
    assert record.id and not (tmp_path / "evil.safetensors").exists()


def test_import_refuses_traversal_names_and_tampered_images(tmp_path):
    store = ConceptStore(tmp_path / "s", TINY)
    store.add(fake_concept("bo"), decode_image(png(0)), {"ref": np.arange(8, dtype=np.float32)})
    exported = store.export("bo", tmp_path / "bo.safetensors")
    # a hostile header name
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(exported), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "evil.safetensors"), metadata={**header, "name": "../../evil"})
    other = ConceptStore(tmp_path / "t", TINY)
    with pytest.raises(ConceptError, match="invalid concept name"):
        other.import_file(tmp_path / "evil.safetensors")
    tensors["reference_image"] = torch.frombuffer(bytearray(png(5)), dtype=torch.uint8).clone()
    save_file(tensors, str(tmp_path / "swapped.safetensors"), metadata=header)
    with pytest.raises(ConceptError, match="hash"):
        other.import_file(tmp_path / "swapped.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ConceptError, match="not a readable concept file"):
        other.import_file(tmp_path / "junk.safetensors")
    assert len(other) == 0 and not list((tmp_path / "t" / "concepts").glob("*"))


# ---------------------------------------------------------------------- base model binding
def test_store_refuses_another_base_model(tmp_path):
    ConceptStore(tmp_path, TINY).add(fake_concept("bo"))
    with pytest.raises(
        StoreMismatchError, match=r"made for base model 'tiny' \(hidden size 64\), not 'plvm/llava-mini'"
    ):
        ConceptStore(tmp_path, StoreIdentity("plvm/llava-mini", 576))
    with pytest.raises(StoreMismatchError, match="hidden size"):
        ConceptStore(tmp_path, StoreIdentity("tiny", 128))
    unbound = ConceptStore(tmp_path)  # management without a model works
    assert unbound.identity == TINY and unbound.names() == ["bo"]
    with pytest.raises(StoreMismatchError):
        unbound.add(fake_concept("mo", base="llava-hf/llava-1.5-7b-hf", d=64))


def test_export_import_round_trip_into_a_new_store(tmp_path):
    a = ConceptStore(tmp_path / "a", TINY)
    a.add(fake_concept("bo", 3), decode_image(png(3)), {"ref": np.arange(1, 9, dtype=np.float32)})
    path = a.export("bo", tmp_path / "bo.safetensors")
    assert ConceptEmbedding.load(path).name == "bo"  # still a plain concept file
    b = ConceptStore(tmp_path / "b")
    record = b.import_file(path, name="<bob>")
    assert record.name == "bob" and b.identity == TINY and record.image_sha256 == a.get("bo").image_sha256
    assert torch.equal(b.load("bob").context, a.load("bo").context)
    assert np.array_equal(b.features("bob")["ref"], np.arange(1, 9, dtype=np.float32))
    with pytest.raises(ConceptExistsError):
        b.import_file(path, name="bob")
    c = ConceptStore(tmp_path / "c", StoreIdentity("other", 64))
    with pytest.raises(StoreMismatchError):
        c.import_file(path)


def test_concept_files_with_the_retired_answer_style_metadata_still_import_and_load(tmp_path):
    """Concepts made by name-first Aligners (a removed option) record ``answer_style`` in their metadata: ignored."""
    old = fake_concept("bo", 5)
    old.metadata["answer_style"] = "name-first"
    path = old.save(tmp_path / "bo.safetensors")
    assert ConceptEmbedding.load(path).metadata["answer_style"] == "name-first"
    store = ConceptStore(tmp_path / "store", TINY)
    assert store.import_file(path).name == "bo"
    assert torch.equal(store.load("bo").e_weight, old.e_weight)


# ---------------------------------------------------------------------- identify
def test_add_from_image_and_identify_ranks_the_reference_first(tmp_path, plvm):
    store = ConceptStore(tmp_path, StoreIdentity.of(plvm))
    encoder = ReferenceEncoder(plvm)
    for i, n in enumerate(["bo", "mo", "zo"]):
        store.add_from_image(n, png(10 + i, (64, 64)), encoder)
    identifier = Identifier(store, encoder, threshold=0.999)
    query = decode_image(png(11, (64, 64))).image
    result = identifier.identify(query)
    assert [m.name for m in result.matches][0] == "mo" and result.matches[0].score == pytest.approx(1.0, abs=1e-4)
    assert result.present[0].name == "mo" and result.to_dict()["present"][0] == "mo"
    # a region: the photo pasted into a bigger canvas is found through its box
    canvas = Image.new("RGB", (200, 120), (0, 0, 0))
    canvas.paste(query, (100, 30))
    boxed = identifier.identify(canvas, regions=[(100, 30, 164, 94)])
    assert boxed.matches[0].name == "mo" and boxed.matches[0].source == "region"
    assert boxed.matches[0].box == (100, 30, 164, 94) and boxed.matches[0].present


class FakeFaces:
    """A face backend stand-in with the FaceEncoder interface: one 'face' whose embedding is its mean colour."""

    name = "fake"

    def detect_and_embed(self, image):
        from types import SimpleNamespace

        arr = np.asarray(image.convert("RGB"), dtype=np.float32)
        h, w = arr.shape[:2]
        return [
            SimpleNamespace(
                box=(0, 0, w // 2, h // 2), score=0.9, embedding=arr[: h // 2, : w // 2].mean(axis=(0, 1)) - 127.0
            )
        ]


def test_face_backend_hook_adds_regions_and_face_matches(tmp_path, plvm):
    faces = FakeFaces()
    store = ConceptStore(tmp_path, StoreIdentity.of(plvm))
    encoder = ReferenceEncoder(plvm, face=faces)
    red = Image.new("RGB", (64, 64), (250, 10, 10))
    blue = Image.new("RGB", (64, 64), (10, 10, 250))
    buf = io.BytesIO()
    red.save(buf, "PNG")
    store.add_from_image("red", buf.getvalue(), encoder)
    buf = io.BytesIO()
    blue.save(buf, "PNG")
    store.add_from_image("blue", buf.getvalue(), encoder)
    assert "face:fake" in store.get("red").feature_kinds
    result = Identifier(store, encoder, face=faces, threshold=2.0, face_threshold=0.9).identify(red)
    assert result.regions == [(0, 0, 32, 32)]
    top = result.matches[0]
    assert top.name == "red" and top.source == "face" and top.present


class ListedFaces:
    """A face backend returning fixed faces (box, score, embedding)."""

    name = "listed"

    def __init__(self, faces):
        self.faces = faces

    def detect_and_embed(self, image):
        from types import SimpleNamespace

        return [SimpleNamespace(box=b, score=s, embedding=np.asarray(e, np.float32)) for b, s, e in self.faces]


def test_main_face_is_the_large_central_one_and_no_face_is_recorded(tmp_path, plvm):
    from plvm.identify import main_face

    edge_big = ((0, 0, 60, 60), 0.99, [1, 0, 0])  # bigger, but in the corner
    centre = ((70, 70, 130, 128), 0.80, [0, 1, 0])
    tiny = ((95, 95, 105, 105), 0.99, [0, 0, 1])
    faces = ListedFaces([edge_big, centre, tiny]).detect_and_embed(None)
    assert main_face(faces, (200, 200)).box == centre[0]
    assert main_face(faces[:1], (200, 200)).box == edge_big[0] and main_face([], (10, 10)) is None

    store = ConceptStore(tmp_path, StoreIdentity.of(plvm))
    with_face = store.add_from_image(
        "bo", png(1, (200, 200)), ReferenceEncoder(plvm, face=ListedFaces([edge_big, centre]))
    )
    assert with_face.metadata["face"] == {
        "backend": "face:listed",
        "faces_found": 2,
        "box": [70.0, 70.0, 130.0, 128.0],
        "score": 0.8,
    }
    assert list(store.feature_matrix("face:listed").names) == ["bo"]
    np.testing.assert_allclose(store.feature_matrix("face:listed").matrix[0], [0, 1, 0], atol=1e-6)
    mug = store.add_from_image("mug", png(2, (200, 200)), ReferenceEncoder(plvm, face=ListedFaces([])))
    assert mug.metadata["face"] == {"backend": "face:listed", "faces_found": 0}
    assert "face:listed" not in mug.feature_kinds and any(k.startswith("ref:") for k in mug.feature_kinds)
    assert store.get("mug").metadata["face"]["faces_found"] == 0  # persisted, not just returned


def test_visual_prompt_describes_where_identified_people_are(tmp_path, plvm):
    from plvm.chat import ChatSession
    from plvm.identify import IdentifyResult, Match, visual_prompt

    result = IdentifyResult(
        [
            Match("bo", 0.9, "face", (10, 0, 50, 40), True),
            Match("al", 0.8, "face", (160, 0, 200, 40), True),
            Match("cy", 0.7, "image", None, True),
            Match("zz", 0.1, "face", (90, 0, 110, 40), False),
        ],
        threshold=0.5,
    )
    assert visual_prompt(result, 200) == (
        "<bo> is the person on the left. <al> is the person on the right. <cy> appears in this photo."
    )
    assert visual_prompt(result, 200, names=["al"]) == "<al> is the person on the right."
    assert visual_prompt(IdentifyResult([], 0.5), 200) == ""

    # in a chat session: the hint precedes the question only when switched on
    faces = ListedFaces([((0, 0, 20, 20), 0.9, [1, 0, 0])])
    store = ConceptStore(tmp_path, StoreIdentity.of(plvm))
    encoder = ReferenceEncoder(plvm, face=faces)
    store.add_from_image("bo", png(3, (120, 60)), encoder)
    for switched, expected in ((True, "<bo> is the person on the left.\nIs <bo> here?"), (False, "Is <bo> here?")):
        session = ChatSession(
            plvm,
            store,
            Identifier(store, encoder, face=faces, threshold=2.0, face_threshold=0.9),
            visual_prompt=switched,
            max_new_tokens=2,
        )
        session.set_image(decode_image(png(4, (120, 60))).image)
        turn = session.prepare("Is <bo> here?")
        assert [a.name for a in turn.active] == ["bo"] and turn.identify.present[0].source == "face"
        assert session.history()[-1]["text"] == expected


def _seed_index(store: ConceptStore, names: list[str], kind: str, feats: np.ndarray) -> None:
    """Fill the index with many concepts quickly (rows + feature vectors; identify never opens their files)."""
    with store._write() as db:
        db.executemany(
            "INSERT INTO concepts(id, name, base_model, hidden_size, num_context_tokens, created_at, updated_at) "
            "VALUES (?, ?, 'tiny', 64, 4, 0, 0)",
            [(f"{i:032x}", n) for i, n in enumerate(names)],
        )
        db.executemany(
            "INSERT INTO features(concept_id, kind, dim, vector) VALUES (?, ?, ?, ?)",
            [(f"{i:032x}", kind, feats.shape[1], feats[i].tobytes()) for i in range(len(names))],
        )


def test_identify_over_ten_thousand_concepts_is_one_cached_matrix(tmp_path, plvm):
    store = ConceptStore(tmp_path, StoreIdentity.of(plvm))
    encoder = ReferenceEncoder(plvm)
    rng = np.random.default_rng(0)
    n = 10_000
    feats = rng.standard_normal((n, 32)).astype(np.float32)
    query = decode_image(png(7, (64, 64))).image
    feats[1234] = encoder.features([query])[0]
    _seed_index(store, [f"c{i:05d}" for i in range(n)], encoder.kind, feats)
    identifier = Identifier(store, encoder)
    first = identifier.identify(query, top_k=3)
    matrix = store.feature_matrix(encoder.kind)
    assert matrix.matrix.shape == (n, 32) and store.feature_matrix(encoder.kind) is matrix  # cached
    again = identifier.identify(query, top_k=3)
    assert first.matches[0].name == again.matches[0].name == "c01234" and len(again.matches) == 3
    assert first.num_concepts == n and first.matches[0].score == pytest.approx(1.0, abs=1e-4)
    store.add(fake_concept("late"), features={encoder.kind: feats[1234]})  # a write invalidates the cache
    assert store.feature_matrix(encoder.kind) is not matrix and len(store.feature_matrix(encoder.kind)) == n + 1
    other = ConceptStore(tmp_path, StoreIdentity.of(plvm))  # another process's write is seen too
    other.remove("late")
    assert len(store.feature_matrix(encoder.kind)) == n


def test_add_many_is_one_transaction(tmp_path):
    store = ConceptStore(tmp_path, TINY)
    items = [NewConcept(fake_concept(f"c{i}", i), features={"k": np.ones(4, np.float32)}) for i in range(50)]
    items.append(NewConcept(fake_concept("C3")))  # collides (ignoring case) with c3: nothing is added
    with pytest.raises(ConceptExistsError):
        store.add_many(items)
    assert len(store) == 0 and not list((tmp_path / "concepts").glob("*"))
    assert len(store.add_many(items[:50])) == 50 and len(store.feature_matrix("k")) == 50


def test_stored_concepts_keep_the_base_revision_and_are_refused_on_another(tmp_path):
    from plvm.concept import IncompatibleConceptError
    from plvm.conversation import single_turn

    plvm = tiny_plvm()  # its own instance: the base revision is changed below
    plvm.lvlm.base_revision = "projector-sha256:aaaa"
    store = ConceptStore(tmp_path, StoreIdentity.of(plvm))
    store.add_from_image("bo", png(3, (64, 64)), ReferenceEncoder(plvm))  # the store's one-pass concept maker
    bo = ConceptStore(tmp_path, StoreIdentity.of(plvm)).load("bo")  # a fresh handle: read back from disk
    assert bo.base_revision == "projector-sha256:aaaa"
    image = decode_image(png(4, (64, 64))).image
    plvm.lvlm.prepare([single_turn("Is <bo> here?", [bo], image=image)])
    plvm.lvlm.base_revision = "projector-sha256:bbbb"  # the committed base was retrained since
    with pytest.raises(IncompatibleConceptError, match="revision projector-sha256:aaaa"):
        plvm.lvlm.prepare([single_turn("Is <bo> here?", [bo], image=image)])
