"""The compression environment (gymnasium)."""
