"""The request pipeline (``pipeline.py``: exact and semantic cache, prompt layer, router, a
tier, the answer stored back), what it returns (``generation.py``, ``continuation.py``), the
model-default sampling settings (``sampling.py``) and the remote tier (``remote.py``). No HTTP
and no Textual here; see docs/architecture.md."""
