"""Typed, strict configuration: the model catalogue (models.toml) and daemon settings."""

from edgeinfer.config.load import load_catalogue
from edgeinfer.config.schema import Catalogue, ModelSpec

__all__ = ["Catalogue", "ModelSpec", "load_catalogue"]
