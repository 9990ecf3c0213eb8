"""Benchmarks of picochat side by side with the libraries a user would pick instead.

Run them from the repository root as modules (`python -m bench.train`, `python -m bench.generate`,
`python -m bench.ppo`); see bench/README.md for the commands and the results.
"""
