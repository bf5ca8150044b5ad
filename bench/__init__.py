"""Benchmarks of the session store: Locust mixes, raw capacity, memory per session."""
