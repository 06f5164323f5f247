"""``python -m modelmora.cli``: the same as the ``modelmora`` command."""

from modelmora.cli import main

main()
