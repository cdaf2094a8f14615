"""Test fixtures built from real parts: a loopback sshd, a fake adbd driven by the real adb client."""
