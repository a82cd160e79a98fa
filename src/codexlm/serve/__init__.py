"""Serving a model folder: the OpenAI-shaped requests and errors (protocol.py), the one
model worker that generates for them (engine.py), and the HTTP server (app.py)."""
