"""The network: architecture config, logical axis names, Flax layers and modules, and the HF-style facade."""
