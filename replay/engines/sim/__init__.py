"""The simulated engine: a vLLM-like scheduler, a roofline performance model (perf.py) and a modelled power model
(power.py)."""
