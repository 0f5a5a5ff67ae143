"""The prompt layer: templates now; compression and context selection as they land."""
