"""The `specserve` command line: every subcommand's flags, and handlers that import their heavy modules
only when they run (so `specserve --help` and `specserve bench serve` never load torch)."""
