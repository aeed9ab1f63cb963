"""``python -m mixkit`` (and ``torchrun -m mixkit train ...``)."""

import sys

from mixkit.cli import main

sys.exit(main())
