"""What a request asks of the generation: its options (validated by the server's schemas)
and the tools it offers. Read by the service, the router, the cache keys and the tiers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edgeinfer.core.values import Sampling


@dataclass(frozen=True)
class ToolSpec:
    """A request's tools, as the service and the cache keys see them."""

    tools: tuple[Mapping[str, Any], ...]  # the "function" objects: name, description, parameters
    choice: str = "auto"  # "auto" | "required" | "none" | a function's name
    parallel: bool = True

    @property
    def offered(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> bool:
        return self.offered and self.choice != "auto"

    def names(self) -> list[str]:
        return [str(t["name"]) for t in self.tools]

    def key(self) -> str:
        """Canonical JSON of everything here, for the cache keys."""
        body = {"tools": list(self.tools), "choice": self.choice, "parallel": self.parallel}
        return json.dumps(body, sort_keys=True, ensure_ascii=False)


# The ``edgeinfer`` object's fields, as GenerateOptions holds them.
EDGEINFER_FIELDS = (
    "timeout",
    "cache",
    "cache_threshold",
    "route",
    "min_quality",
    "max_cost",
    "request_type",
    "continue_on_length",
    "compress",
    "context_budget",
)


@dataclass(frozen=True)
class GenerateOptions:
    """What a request asks of the generation itself (validated by the server's schemas)."""

    max_tokens: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: off; n: also the top n alternatives
    logprob_tokens: int | None = None  # logprobs for only the first n tokens (a cascade's draft)
    response_format: str | None = None  # "json_object" | "json_schema"
    json_schema: str | None = None
    timeout: float | None = None  # seconds; the daemon's default when None
    cache: str | None = None  # edgeinfer.cache: "off" | "exact" | "semantic"; None = policy
    cache_threshold: float | None = None
    # router (model "auto"): policy and constraints; see edgeinfer.routing.policy
    route: str | None = None  # "cheapest" | "cascade" | "best"; None = the configured default
    min_quality: float | None = None
    max_cost: float | None = None
    request_type: str | None = None  # inferred from the last user turn when None
    continue_on_length: bool = False  # extend an answer cut at max_tokens from its KV state
    # the reader takes the answer as it is generated; False (a non-streamed response): only
    # the whole answer is read, so a runner hands its text over once, at the end
    stream: bool = True
    # prompt layer: None = the [prompt] settings
    compress: bool | None = None
    context_budget: int | None = None
    # who asks ("uid:1000" on the socket, "tcp" for token holders): the response cache is
    # partitioned by it, so one user's answers (and questions) are never served to another
    identity: str = ""
    # sampling fields the request left out: the serving model's defaults fill them in
    # (service.sampling.with_defaults) once it is known; until then they hold Sampling's own
    default_sampling: frozenset[str] = frozenset()
    tools: ToolSpec | None = None  # tools offered (or not: tool_choice none), tool_choice
    # when the request's timeout (its own, else the daemon's) runs out, monotonic seconds: set
    # once by the service as the request arrives, so every tier and round it takes shares it
    deadline: float | None = None

    def edgeinfer_given(self) -> list[str]:
        """The ``edgeinfer`` options this request set to something else than their default, so
        an endpoint that does not apply one can refuse it instead of ignoring it."""
        default = _DEFAULT_OPTIONS
        return [n for n in EDGEINFER_FIELDS if getattr(self, n) != getattr(default, n)]

    def key_fields(self) -> dict[str, Any]:
        """Everything here that changes the generated text, for the cache keys."""
        fields = asdict(self.sampling)
        fields.pop("grammar")  # derived from response_format/json_schema, which are keyed
        fields["logit_bias"] = {str(k): v for k, v in self.sampling.logit_bias.items()}
        routing = {
            "route": self.route,
            "min_quality": self.min_quality,
            "max_cost": self.max_cost,
            "request_type": self.request_type,
            "continue_on_length": self.continue_on_length or None,
            "compress": self.compress,
            "context_budget": self.context_budget,
            "identity": self.identity or None,
            # left to a model not chosen yet (model "auto"): "unset" is not "set to 1.0"
            "defaulted": sorted(self.default_sampling) or None,
            "tools": self.tools.key() if self.tools is not None else None,
        }
        return {
            **fields,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "response_format": self.response_format,
            "json_schema": self.json_schema,
            # only when set, so keys of requests without them stay what they were
            **{k: v for k, v in routing.items() if v is not None},
        }


_DEFAULT_OPTIONS = GenerateOptions()
