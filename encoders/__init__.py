"""Solver encodings (LP, MILP via Gurobi or OR-Tools, SMT via Z3) used as exact leaf solvers.

Empty until the solver-plugin issue lands; the package exists so that the layout fixed by the
design card installs as a whole.
"""
