"""Conformance suites, in the style of zarr-python's ``StoreTests``: a contract class holds the
tests every implementation must pass; each implementation subclasses it with its own fixtures."""
