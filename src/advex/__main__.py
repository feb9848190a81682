"""``python -m advex`` is the ``advex`` command."""

from advex.cli import main

main()
