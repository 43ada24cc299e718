"""Sub-commands of the ``napari-vertebra`` command line, one module per area.

Each module defines ``register(subparsers)``; each command sets ``func`` to a function
taking the parsed ``argparse.Namespace`` and returning an exit status.
"""
