"""Multi-neuron relaxations (SoK category "multi-neuron"): ``krelu`` (k-ReLU / PRIMA-style
joint constraints over groups of unstable ReLUs, added to the triangle LP of ``encoders/``)."""
