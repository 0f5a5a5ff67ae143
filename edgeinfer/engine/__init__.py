"""The engine port: the narrow interface every hardware-bound model call goes through."""

from edgeinfer.engine.base import (
    BatchItem,
    Engine,
    EngineFactory,
    EngineInfo,
    EngineParams,
    Sampling,
    Vocab,
)

__all__ = [
    "BatchItem",
    "Engine",
    "EngineFactory",
    "EngineInfo",
    "EngineParams",
    "Sampling",
    "Vocab",
]
