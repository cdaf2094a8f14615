"""`make demo`: the whole trip on digits (train, distill, prune, int8, four formats, accuracy in each runtime) into
dist/digits. Re-running replaces what the demo made before (never another folder: --force replaces only edgeship output)."""
from __future__ import annotations

import sys

from .cli import main

# The teacher is DigitsCNN at width 112 (795k parameters), so the pruned student that ships (88k) is mostly weights:
# at width 32 it had 7k, and the files' fixed cost (names, scales, graph: ~9 kB) left the int8 files 0.42-0.60x fp32.
# Training stays cheap (18M MACs per digit); `make demo` takes about 80 s on 2 cores.
DEMO = ["compress", "example:digits_cnn(width=112)", "--recipe", "digits-demo", "--out", "dist/digits", "--force"]

if __name__ == "__main__":
    sys.argv = ["edgeship", *DEMO, *sys.argv[1:]]
    main()
