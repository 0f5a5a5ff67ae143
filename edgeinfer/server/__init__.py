"""HTTP over the Unix socket: the FastAPI app (routes, schemas) and the daemon lifecycle."""
