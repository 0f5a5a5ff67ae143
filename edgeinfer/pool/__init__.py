"""Model runners (one thread per loaded model) and the pool that owns them."""
