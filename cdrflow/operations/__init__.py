"""The code behind the operator's commands (`cdrflow tail`, `history`, `republish`,
`replay`, `dead`, `status`, `check`, `simulate`), shared by the console's pages; the
command-line wiring of each is in `cdrflow.commands`."""
