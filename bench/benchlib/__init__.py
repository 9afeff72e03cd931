"""Benchmarks of torque-docker (issue 7): helpers for bench/run.py. Not tests."""
