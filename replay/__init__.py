"""replay: replay LLM request traces against real or simulated engines and measure their energy."""

__version__ = "0.1.0"
