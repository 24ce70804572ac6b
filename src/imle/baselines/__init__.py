"""Rival methods trained here for the benchmarks (same budgets, same data)."""
