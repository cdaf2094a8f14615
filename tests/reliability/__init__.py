"""The reliability catalogue (see conftest.py). A package, so its test_<area>.py files may share a basename with
the per-module tests (tests/package/test_package.py, tests/runtime/test_bench.py) in one pytest run."""
