"""Every file uniprune reads or writes: atomic writes, the compressed checkpoint, the exported artifact."""
