"""Solver encodings (LP, MILP via Gurobi or OR-Tools, SMT via Z3): the ``milp``, ``lp``,
``lp-full`` and ``smt`` methods and the exact LeafSolver for the BaB engine.

``encoding`` builds a solver-neutral model of a network on a sub-domain, ``model`` lowers it to
an LP/MILP, ``backends``/``gurobi_backend``/``smt`` solve it, ``decide`` turns solver answers
into sound verdicts (and holds ``decide_leaf``), ``lp`` computes LP bounds, ``methods`` holds
the Verifier plugins. See docs/solvers.md.
"""
