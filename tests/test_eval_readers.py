"""Dataset readers of plvm.eval on small fixture trees (mixed extensions, OS litter, corrupt images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plvm.eval.readers import (
    DatasetFormatError,
    UnreadableImageWarning,
    detect_format,
    read_dataset,
    sanitize_name,
)

pytestmark = pytest.mark.filterwarnings("ignore::plvm.eval.readers.DatasetWarning")


def img(path: Path, colour=(200, 30, 30), fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16, 3), colour, np.uint8)).save(path, format=fmt)
    return path


def corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 10)  # PNG signature, broken body
    return path


@pytest.fixture()
def plvm_tree(tmp_path: Path) -> Path:
    root = tmp_path / "validation_recognition"
    img(root / "alice" / "ref_img.PNG", fmt="PNG")
    img(root / "alice" / "query_img1.jpg")
    img(root / "alice" / "query_img10.png")
    img(root / "alice" / "query_img2.JPEG", fmt="JPEG")
    corrupt(root / "alice" / "query_img3.png")
    (root / "alice" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "alice" / "notes.txt").write_text("not an image")
    img(root / "bob" / "ref_img.jpg", (30, 30, 200))
    img(root / "bob" / "query_img.webp", (30, 30, 200), fmt="WEBP")
    corrupt(root / "carl" / "ref_img.png")  # unreadable reference: the concept is dropped
    img(root / "carl" / "query_img1.png")
    (root / "stray_dir").mkdir()
    (root / ".DS_Store").write_bytes(b"\x00")
    visual = [
        {
            "ref_img": "validation_recognition/alice/ref_img.PNG",
            "query_img": "validation_recognition/alice/query_img1.jpg",  # resolved by its trailing components
            "question": "What is <sks> wearing?",
            "multiple_choice": {"A": "A hat", "B": "A scarf"},
            "correct_answer": "B",
        },
        {
            "ref_img": "alice/ref_img.PNG",
            "query_img": "alice/query_img3.png",
            "question": "Where is <sks>?",
            "multiple_choice": {"A": "Left", "B": "Right"},
            "correct_answer": "A",
        },  # corrupt image → skipped
        {
            "ref_img": "bob/ref_img.jpg",
            "query_img": "bob/query_img.webp",
            "question": "Is <bob> smiling?",
            "multiple_choice": {"A": "Yes", "B": "No"},
            "correct_answer": "E",
        },  # not an option → skipped
        {
            "ref_img": "bob/ref_img.jpg",
            "query_img": "bob/query_img.webp",
            "question": "What color is <bob>'s shirt?",
            "multiple_choice": {"A": "Red", "B": "Blue", "C": "Green"},
            "correct_answer": "(C)",
        },
    ]
    text = [
        {
            "ref_img": "bob/ref_img.jpg",
            "query_img": None,
            "question": "What is <sks>'s hair color?",
            "multiple_choice": ["Black", "Blond"],
            "correct_answer": "B. Blond",
        },
        {
            "ref_img": "nobody/ref_img.jpg",
            "question": "Who?",
            "multiple_choice": {"A": "x", "B": "y"},
            "correct_answer": "A",
        },  # unknown concept → skipped
        {
            "ref_img": "bob/ref_img.jpg",
            "question": "Is <sks> taller than <alice>?",
            "multiple_choice": {"A": "Yes", "B": "No"},
            "correct_answer": "A",
        },  # names another concept → skipped
    ]
    (root / "query_ques.json").write_text(json.dumps(visual))
    (root / "non_query_ques.json").write_text(json.dumps(text))
    multi = root / "multi"
    img(multi / "images" / "pair.png")
    img(multi / "images" / "solo.jpg")
    img(multi / "images" / "outside.JPG")
    corrupt(multi / "images" / "bad.png")
    img(multi / "images" / "unlisted.png")
    (multi / "images" / ".DS_Store").write_bytes(b"\x00")
    (multi / "annotations.json").write_text(
        json.dumps(
            {
                "pair.png": ["alice", "bob"],
                "solo.jpg": ["bob", "zed"],
                "outside.JPG": [],
                "bad.png": ["alice"],
                "missing.png": ["bob"],
            }
        )
    )
    return root


def test_plvm_reader(plvm_tree: Path):
    assert detect_format(plvm_tree) == "plvm"
    with pytest.warns(UnreadableImageWarning):
        ds = read_dataset(plvm_tree)
    assert ds.format == "plvm"
    assert list(ds.concepts) == ["alice", "bob"]  # carl's reference is corrupt, stray_dir has none
    alice = ds.concepts["alice"]
    assert alice.reference.name == "ref_img.PNG"
    assert [p.name for p in alice.query_images] == ["query_img1.jpg", "query_img2.JPEG", "query_img10.png"]
    assert [p.name for p in ds.concepts["bob"].query_images] == ["query_img.webp"]
    # unreadable images: alice/query_img3.png, carl/ref_img.png, multi/images/bad.png — each counted once
    bad = sorted(Path(s.path).relative_to(plvm_tree).as_posix() for s in ds.skipped_images)
    assert bad == ["alice/query_img3.png", "carl/ref_img.png", "multi/images/bad.png"]
    assert ds.summary()["skipped_images"] == 3
    assert any("stray_dir" in n for n in ds.notes)

    assert [(q.concept, q.answer, q.image.name) for q in ds.visual_qa] == [
        ("alice", "B", "query_img1.jpg"),
        ("bob", "C", "query_img.webp"),
    ]
    assert ds.visual_qa[1].question == "What color is <sks>'s shirt?"  # <bob> normalised to <sks>
    assert [(q.concept, q.options, q.answer, q.image) for q in ds.text_qa] == [
        ("bob", {"A": "Black", "B": "Blond"}, "B", None)
    ]
    assert ds.summary()["skipped_entries"] == 4 + 1  # 4 QA entries + multi/missing.png

    splits = {m.path.name: (m.split, m.concepts) for m in ds.multi}
    assert splits == {
        "pair.png": ("multi", ["alice", "bob"]),
        "solo.jpg": ("single", ["bob"]),
        "outside.JPG": ("external", []),
    }
    assert any("zed" in n for n in ds.notes) and any("not in annotations.json" in n for n in ds.notes)
    assert ds.image(alice.query_images[0]).mode == "RGB"


@pytest.fixture()
def yollava_tree(tmp_path: Path) -> Path:
    root = tmp_path / "yollava-data"
    for name in ("0.png", "1.jpg", "10.png", "2.png"):
        img(root / "train" / "bo" / name)
    (root / "train" / "bo" / ".DS_Store").write_bytes(b"\x00")
    img(root / "train" / "bo" / "negative_example" / "n1.png", (0, 0, 0))
    img(root / "test" / "bo" / "0.png")
    img(root / "test" / "bo" / "1.PNG", fmt="PNG")
    corrupt(root / "test" / "bo" / "2.png")
    img(root / "train" / "mam" / "0.jpeg", (0, 200, 0), fmt="JPEG")
    img(root / "test" / "mam" / "5.png", (0, 200, 0))
    img(root / "test" / "orphan" / "0.png")
    (root / "yollava-visual-qa.json").write_text(
        json.dumps(
            {
                "./yollava-data/test/bo/0.png": {
                    "question": "What is the primary color of <sks>'s fur?",
                    "options": {"A": "Brown", "B": "Grey"},
                    "correct_answer": "A",
                },
                "./yollava-data/test/mam/5.png": [
                    {"question": "Is <sks> sitting?", "options": {"A": "Yes", "B": "No"}, "correct_answer": "B"}
                ],
            }
        )
    )
    return root


def test_yollava_reader(yollava_tree: Path):
    assert detect_format(yollava_tree) == "yollava"
    with pytest.warns(UnreadableImageWarning):
        ds = read_dataset(yollava_tree)
    assert list(ds.concepts) == ["bo", "mam"]
    bo = ds.concepts["bo"]
    assert [p.name for p in bo.train_images] == ["0.png", "1.jpg", "2.png", "10.png"]  # natural order
    assert bo.reference.name == "0.png" and bo.reference.parent.parent.name == "train"
    assert [p.name for p in bo.query_images] == ["0.png", "1.PNG"]
    assert bo.negative_images == []
    assert len(ds.skipped_images) == 1
    assert any("orphan" in n for n in ds.notes)
    assert [(q.concept, q.answer, q.image.relative_to(yollava_tree).as_posix()) for q in ds.visual_qa] == [
        ("bo", "A", "test/bo/0.png"),
        ("mam", "B", "test/mam/5.png"),
    ]

    with pytest.warns(UnreadableImageWarning):
        ds2 = read_dataset(yollava_tree, reference_index=2, negative_examples=True)
    assert ds2.concepts["bo"].reference.name == "2.png"
    assert [p.name for p in ds2.concepts["bo"].negative_images] == ["n1.png"]


def test_unknown_layout_and_names(tmp_path: Path):
    with pytest.raises(DatasetFormatError):
        detect_format(tmp_path)
    assert sanitize_name("Mr. T") == "Mr__T"
    assert sanitize_name("image") == "image_"
    assert sanitize_name("bo", taken=["bo"]) == "bo_2"


def test_a_concept_subset_is_seeded_and_keeps_only_its_concepts_items(tmp_path: Path):
    from plvm.eval.readers import read_dataset
    from plvm.eval.toydata import write_toy_dataset

    full = read_dataset(write_toy_dataset(tmp_path / "toy", n_concepts=4), format="plvm")
    sub = full.subset(2, seed=5)
    assert len(sub.concepts) == 2 and set(sub.concepts) < set(full.concepts)
    assert sub.subset(2, seed=5).concepts.keys() == sub.concepts.keys()  # same seed, same concepts
    assert list(full.subset(2, seed=5).concepts) == list(sub.concepts)
    others = {tuple(full.subset(2, seed=s).concepts) for s in range(8)}
    assert len(others) > 1  # the seed decides which
    assert sub.text_qa and all(q.concept in sub.concepts for q in sub.text_qa)
    assert len(sub.text_qa) < len(full.text_qa) and len(sub.visual_qa) < len(full.visual_qa)
    assert [m.path for m in sub.multi] == [m.path for m in full.multi]  # images stay; unknown people are unlisted
    assert all(set(m.concepts) <= set(sub.concepts) for m in sub.multi)
    assert any("2 of 4 concepts" in note for note in sub.notes)
    assert full.subset(10).concepts.keys() == full.concepts.keys() and full.subset(10).notes == full.notes
    with pytest.raises(ValueError, match="n >= 1"):
        full.subset(0)
