"""``python -m lightjax.export MODEL CHECKPOINT OUT`` (see :mod:`lightjax.export.cli`)."""

import sys

from lightjax.export.cli import main

if __name__ == "__main__":
    sys.exit(main())
