"""One module per `bitalloc` subcommand: `add_parser(sub)` declares it, `run(args)` runs it."""
