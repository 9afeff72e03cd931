"""Benchmarks of torque-docker: helpers for bench/run.py. Not tests."""
