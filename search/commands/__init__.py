"""One module per CLI verb; each has ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> dict``."""

from . import bench, demo, eval_cmd, export, finetune, replay, report, search_cmd, train

COMMANDS = (train, eval_cmd, search_cmd, finetune, replay, bench, export, report, demo)
