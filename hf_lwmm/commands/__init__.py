"""Sub-commands of ``lwmm-hub``: each module defines ``register(subparsers)`` and sets ``run``."""
