"""What a config reload changes in the pool: a pure diff of two catalogues' served models.

A model whose engine-relevant keys are unchanged keeps its runner (and its warm KV cache);
keys the runner never reads (description, routing figures, keep-alive, pin) update in place.
Anything else (the file, context size, slots, KV type, ...) restarts it on a new runner while
the old one finishes its requests. Unknown future keys count as engine keys: a restart is the
safe side of the mistake.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edgeinfer.config.schema import ModelSpec

METADATA_KEYS = frozenset(
    {
        "description",
        "license",
        "serve",
        "quality",
        "cost_per_1k",
        "tags",
        "max_tokens",
        "keep_alive",
        "pin",
    }
)
"""Keys read per request or by the scheduler, never by a runner: changing them keeps the runner."""


@dataclass(frozen=True)
class ReloadPlan:
    """Model names by what happens to them, each tuple in the new catalogue's order."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()

    def summary(self) -> str:
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("restarted", self.restarted),
                ("updated", self.updated),
            )
            if names
        ]
        return "; ".join(parts) or "no model changes"


def runner_keys_changed(old: ModelSpec, new: ModelSpec) -> bool:
    """Whether ``new`` needs a new runner (an engine-relevant key differs)."""
    skip = METADATA_KEYS
    before = old.model_dump(exclude=set(skip))
    after = new.model_dump(exclude=set(skip))
    return before != after


def plan_reload(old: Mapping[str, ModelSpec], new: Mapping[str, ModelSpec]) -> ReloadPlan:
    """Classify every model of ``old`` and ``new`` (see the module docstring)."""
    added, restarted, updated, unchanged = [], [], [], []
    for name, spec in new.items():
        before = old.get(name)
        if before is None:
            added.append(name)
        elif before == spec:
            unchanged.append(name)
        elif runner_keys_changed(before, spec):
            restarted.append(name)
        else:
            updated.append(name)
    removed = tuple(name for name in old if name not in new)
    return ReloadPlan(tuple(added), removed, tuple(restarted), tuple(updated), tuple(unchanged))
