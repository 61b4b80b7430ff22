"""``python -m plvm.cli …`` is ``plvm …``."""

from plvm.cli import main

main()
