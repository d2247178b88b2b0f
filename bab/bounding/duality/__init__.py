"""Duality-based bounds (SoK: duality): the Wong-Kolter dual network."""
