"""Equinox: holistic fair scheduling for shared LLM serving, with VTC and FCFS baselines and an engine simulator."""
