"""Interval bounds (SoK: interval)."""
