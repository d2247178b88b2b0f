"""Polyhedral bounds (SoK: polyhedra): the CROWN family and forward symbolic bounds."""
