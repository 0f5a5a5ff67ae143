"""edgeinfer: a local inference daemon over a Unix socket."""

__version__ = "0.1.0"
