"""covidet's benchmarks (docs/performance.md). Not tests: they measure and write JSON reports under
``benchmarks/results/``; nothing is asserted.

Most run as scripts (``python benchmarks/detector.py ...``). Those that reuse the tests' deployments
(the seeded reading room, the test server and its users: ``tests.api.conftest``, ``tests.web``) run as
modules from the repository root, so that ``tests`` imports as it does under pytest, without editing
``sys.path``: ``python -m benchmarks.web_timings``, ``python -m benchmarks.dicomweb``.
"""
