"""mdlm-fast serve: an OpenAI-compatible HTTP server over one engine (the ASGI parts need the serve extra)."""
