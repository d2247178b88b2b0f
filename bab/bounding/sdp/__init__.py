"""Semidefinite-programming bounds (SoK: SDP): ``sdp`` (SDPVerify, Raghunathan et al. 2018)
and ``lmi`` (the quadratic-constraint LMI of Fazlyab, Morari, Pappas 2020).

Both need cvxpy (a default dependency); the solve and the floating-point-sound recovery of
the bound from the dual live in :mod:`bab.bounding.sdp.solve`.
"""
