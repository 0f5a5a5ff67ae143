"""llama.cpp sampler chains: how a request's :class:`~edgeinfer.core.values.Sampling` picks tokens.

:meth:`~edgeinfer.engine.llama.LlamaEngine.new_sampler` builds one per request with
:func:`build_sampler`; the engine samples with it and frees it.
"""

from __future__ import annotations

from typing import Any

import llama_cpp.llama_cpp as C

from edgeinfer.core.values import Sampling
from edgeinfer.errors import InvalidRequest


class Sampler:
    """A llama.cpp sampler chain, freed by ``LlamaEngine.free_sampler``; ``None`` for plain
    greedy decoding, which ``LlamaEngine.sample`` does as an argmax over the logits."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain


def build_sampler(vocab: Any, n_vocab: int, sampling: Sampling) -> Sampler:
    """The chain for one request's ``sampling`` over ``vocab`` (``n_vocab`` tokens)."""
    plain = not (
        sampling.logit_bias
        or sampling.grammar is not None
        or sampling.repeat_penalty != 1.0
        or sampling.presence_penalty
        or sampling.frequency_penalty
    )
    if sampling.greedy and plain:
        # llama_sampler_sample copies all n_vocab logits into a candidate array before the
        # greedy pick: 6% of a runner's time at 8 clients on tiny (py-spy). An argmax over
        # the logits is the same choice (the first maximum) for a chain that keeps no state.
        return Sampler(None)
    chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
    add = C.llama_sampler_chain_add
    if sampling.logit_bias:
        arr = (C.llama_logit_bias * len(sampling.logit_bias))()
        for i, (tok, bias) in enumerate(sampling.logit_bias.items()):
            arr[i].token = tok  # type: ignore[assignment]
            arr[i].bias = bias
        add(chain, C.llama_sampler_init_logit_bias(n_vocab, len(arr), arr))
    if sampling.repeat_penalty != 1.0 or sampling.presence_penalty or sampling.frequency_penalty:
        # The C function is (penalty_last_n, repeat, freq, present); llama-cpp-python 0.3.36
        # still declares an old leading n_vocab int. On the x86-64/arm64 C ABIs ints and
        # floats travel in separate registers, so the first int lands in penalty_last_n:
        # pass the window twice. Covered by a real-model test of the penalties.
        window = 64
        add(
            chain,
            C.llama_sampler_init_penalties(
                window,
                window,
                sampling.repeat_penalty,
                sampling.frequency_penalty,
                sampling.presence_penalty,
            ),
        )
    if sampling.grammar is not None:
        grammar = C.llama_sampler_init_grammar(vocab, sampling.grammar.encode(), b"root")
        if not grammar:
            C.llama_sampler_free(chain)
            raise InvalidRequest("llama.cpp refused the grammar for response_format")
        add(chain, grammar)
    if sampling.greedy:
        add(chain, C.llama_sampler_init_greedy())
        return Sampler(chain)
    if sampling.top_k > 0:
        add(chain, C.llama_sampler_init_top_k(sampling.top_k))
    if sampling.top_p < 1.0:
        add(chain, C.llama_sampler_init_top_p(sampling.top_p, 1))
    if sampling.min_p > 0.0:
        add(chain, C.llama_sampler_init_min_p(sampling.min_p, 1))
    add(chain, C.llama_sampler_init_temp(sampling.temperature))
    seed = sampling.seed if sampling.seed is not None else C.LLAMA_DEFAULT_SEED
    add(chain, C.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return Sampler(chain)
