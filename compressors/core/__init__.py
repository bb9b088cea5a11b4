"""The structure core: how weights are tiled into blocks, policies, the exact projection, masks and ties, accounting; the error types."""
