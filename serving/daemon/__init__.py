"""The serving host daemon: an OpenAI-compatible HTTP API in front of the Equinox scheduler (docs/daemon.md).

app.py (ASGI routes), auth.py (API keys by hash), config.py, tokenizer.py, job.py (one request's life),
backends/ (the engines the scheduler drives: sim, upstream), state.py (SQLite counters), metrics.py
(Prometheus), load.py (the load generator), cli.py (``python -m serving serve|load|hash-key``).
"""
