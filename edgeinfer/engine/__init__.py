"""The engine port: the narrow interface every hardware-bound model call goes through."""

from edgeinfer.engine.base import BatchItem, Engine, EngineFactory, EngineInfo, EngineParams, Vocab

__all__ = [
    "BatchItem",
    "Engine",
    "EngineFactory",
    "EngineInfo",
    "EngineParams",
    "Vocab",
]
