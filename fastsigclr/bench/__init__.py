"""Microbenchmarks: providers side by side in one run, results as JSON, plots from the data."""
