"""Jobs a person runs: the CLI, the model and data zoo, searchers, reports."""
