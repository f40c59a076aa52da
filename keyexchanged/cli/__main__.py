"""``python -m keyexchanged.cli``: the ``keyexchange`` command."""

from keyexchanged.cli import run

run()
