"""`python -m edgekit.prepost [--json] [--cold]`: warm up (compile or load) every kernel and time it."""
import sys

from .warmup import main

sys.exit(main())
