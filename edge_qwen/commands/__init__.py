"""One module per CLI subcommand: ``configure_parser(parser)`` and ``main(args) -> dict``."""
