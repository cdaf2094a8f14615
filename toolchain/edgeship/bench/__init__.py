"""Benchmarks on devices: devices.py (local, ssh://, adb), energy.py, harness.py."""
