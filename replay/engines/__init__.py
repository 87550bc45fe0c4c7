"""Engines: the Engine protocol (base.py), the real vLLM engine and the simulated one (sim/)."""
