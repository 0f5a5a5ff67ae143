"""The neutral home of what crosses layers: values (sampling, token logprobs, stream events,
a request's options), an answer in flight (:class:`~edgeinfer.core.generation.Generation`),
and the ports (:class:`~edgeinfer.core.tier.Tier`, :class:`~edgeinfer.core.embedding.Embedder`).

Every layer may import it; it imports nothing of edgeinfer but :mod:`edgeinfer.errors`
(import-linter holds both).
"""
