"""Branching heuristics (Branchers) for the BaB engine: BaBSR, FSB and input-split scores.

Empty until the branch-and-bound issues land; the package exists so that the layout fixed by
the design card installs as a whole.
"""
