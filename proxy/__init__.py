"""meterproxy: an OpenAI-compatible LLM reverse proxy that meters every call."""

__version__ = "0.1.0"
