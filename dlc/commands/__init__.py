"""One module per `dlc` command (dlc.cli parses and dispatches to them). Kept empty: `dlc --help`
imports this package."""
