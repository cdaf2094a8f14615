"""Models that misbehave on purpose, for tests/reliability/test_outdir.py. Each is a real tiny CNN; what it does
wrong happens inside torch.export (a converter tracing it), steered by environment variables the test sets."""
import os

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        if torch.compiler.is_exporting():
            self.while_exporting()
        return self.fc(self.conv(x).mean((2, 3)))

    def while_exporting(self):
        pass


class DropsAFile(Tiny):
    """A user saving notes into --out while the export runs."""

    def while_exporting(self):
        out = os.environ["USER_FILE_DIR"]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "notes.txt"), "w") as f:
            f.write("the user's notes\n")


class FillsTheDisk(Tiny):
    """Fills the output disk, so the converter's own write meets a full disk."""

    def while_exporting(self):
        with open(os.path.join(os.environ["FILL_DIR"], "filler.bin"), "ab") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass


class EndsTheProcess(Tiny):
    """A converter that ends the process on its own (as litert's does on a full disk): only inside litert-torch."""

    def while_exporting(self):
        import sys
        if "litert_torch" in sys.modules:
            os._exit(1)


class NaNOut(Tiny):
    def forward(self, x):
        return super().forward(x) * float("nan")


class NoOutputs(Tiny):
    def forward(self, x):
        return ()


def example():
    return (torch.randn(1, 3, 16, 16),)


def drops_a_file():
    return DropsAFile(), example()


def fills_the_disk():
    return FillsTheDisk(), example()


def ends_the_process():
    return EndsTheProcess(), example()


def nan_out():
    return NaNOut(), example()


def no_outputs():
    return NoOutputs(), example()


def raises():
    raise ValueError("weights file corrupt: checksum mismatch")


def unseeded():
    """Weights from torch's global generator, as most factories draw them: the seed edgeship sets decides them."""
    return Tiny(), example()
