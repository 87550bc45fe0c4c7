"""Reports: serving metrics (TTFT, TPOT, ITL, E2E, goodput) and energy per request and per token."""
