"""``python -m uniprune_lean [DIR] [--batch-size N] [--threads T]`` from the folder holding it: build, run a
random batch, print the output shape and the least time of 20 passes."""

import sys

from .model import main

sys.exit(main())
