"""Phantom: PCIe TLP traces (schema, I/O, rules, statistics) and a generative model of them."""
