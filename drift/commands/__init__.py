"""Subcommands of `drift`: each module here has `register(subparsers)`."""
