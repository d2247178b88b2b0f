"""Sub-commands of the ``bab`` command line; each module exposes ``register(subparsers)``."""
