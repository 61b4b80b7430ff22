#!/usr/bin/env bash
# Installs what the browser test (tests/test_web.py) needs: Debian's chromium and, in .venv, the Python
# driver playwright (its own browser download, `playwright install`, is never used: it fails offline).
# Idempotent; called by scripts/setup.sh. Without root/apt it only prints why the browser test will skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium fonts-dejavu-core >/dev/null
  else
    echo "install_browser.sh: cannot install chromium (needs root and apt-get); tests/test_web.py will be skipped" >&2
  fi
fi
if [ -x .venv/bin/python ]; then
  .venv/bin/python -m pip install -q "playwright>=1.40" "pexpect>=4.8"
fi
if [ -x /usr/bin/chromium ]; then
  /usr/bin/chromium --version 2>/dev/null || true
fi
