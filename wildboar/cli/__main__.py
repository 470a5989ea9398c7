"""``python -m wildboar.cli``: the ``wildboar`` command."""

import sys

from . import main

sys.exit(main())
