"""Cloud adapters behind one Provider protocol; imported lazily through the registry."""
