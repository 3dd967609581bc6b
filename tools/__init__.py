"""Developer tooling that runs from the repository, never installed with freezetune:
``tools.import_graph`` reads the package's import graph for tests/test_architecture.py and
scripts/architecture.py (which writes docs/architecture.md)."""
