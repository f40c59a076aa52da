"""``python -m keyexchanged.cli``: the ``keyexchange`` command."""

import sys

from keyexchanged.cli import main

sys.exit(main())
