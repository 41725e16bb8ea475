"""Speed benchmarks (issue #7): `python -m benchmarks.run --bundle B --checkpoint C` prints the five tables.

Not tests: nothing here asserts a speed. Every comparison runs its contestants in one process, alternating, after
warm-up, and reports medians and ratios. Artefacts (exports, audio) go to --cache (default $MOUSAI_BENCH_CACHE,
else ~/.cache/mousai/bench).
"""
