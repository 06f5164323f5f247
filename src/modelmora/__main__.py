"""``python -m modelmora``: the same commands as the ``modelmora`` console script."""

from modelmora.cli import main

main()
