"""The `bitalloc` command: `app.main` parses; one module per subcommand (`add_parser(sub)` declares it,
`run(args)` runs it). Only argument parsing and printing live here; the library does the work."""
from bitalloc.cli.app import main

__all__ = ["main"]
