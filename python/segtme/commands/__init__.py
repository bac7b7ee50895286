"""CLI subcommands. Each module here defines ``register(subparsers)`` that adds its parser(s)
with ``set_defaults(func=run)``; heavy imports stay inside ``run`` so ``segtme --help`` is fast."""
