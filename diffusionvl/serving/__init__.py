"""Serving: an OpenAI-compatible HTTP server (app.py) over one continuously batched engine loop (scheduler.py)."""
