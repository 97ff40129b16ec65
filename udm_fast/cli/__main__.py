"""``python -m udm_fast.cli``: the ``udm-fast`` command."""

import sys

from .main import main

sys.exit(main())
