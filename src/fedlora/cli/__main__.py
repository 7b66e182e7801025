"""``python -m fedlora.cli``: the ``fedlora`` command."""

from fedlora.cli import main

main()
