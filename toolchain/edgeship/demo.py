"""`make demo`: the whole trip on digits (train, distill, prune, int8, four formats, accuracy in each runtime) into
dist/digits. Re-running replaces what the demo made before (never another folder: --force replaces only edgeship output)."""
from __future__ import annotations

import sys

from .cli import main

DEMO = ["compress", "example:digits_cnn", "--recipe", "digits-demo", "--out", "dist/digits", "--force"]

if __name__ == "__main__":
    sys.argv = ["edgeship", *DEMO, *sys.argv[1:]]
    main()
