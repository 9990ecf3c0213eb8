"""The `picochat` command: one parser, a table of commands, one module per interactive command."""
