"""`make demo`: the main job on the built-in example, into dist/. Re-running replaces what the demo made before."""
from __future__ import annotations

import sys

from .cli import main

DEMO = ["export", "example:mobilenet_like", "--out", "dist/mobilenet_like", "--check-determinism", "--force"]

if __name__ == "__main__":
    sys.argv = ["edgeship", *DEMO, *sys.argv[1:]]
    main()
