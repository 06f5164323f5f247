"""``python -m modelmora``: the same commands as the ``modelmora`` console script."""

from .cli import main

main()
