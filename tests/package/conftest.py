"""Fixtures for tests/package (defined in package_support.py, which the tests also import helpers from)."""
from package_support import (_export_master, _export_with_coreml, android_app, export_dir,  # noqa: F401
                             export_with_coreml, ios_app)
