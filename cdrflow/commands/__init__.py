"""The `cdrflow` subcommands, one module per group: each adds its parsers to the command
line (`add_commands`) and names the function that runs each (`run` on the parsed args);
`cdrflow.cli` only builds the parser and dispatches."""
