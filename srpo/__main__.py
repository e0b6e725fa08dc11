"""``python -m srpo``: the ``srpo`` command (what ``torchrun ... -m srpo run`` starts)."""

import sys

from srpo.cli import main

sys.exit(main())
