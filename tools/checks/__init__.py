"""The tools' own checks (`make tools-check`): each tool's smoke run works. pytest runs them
only when asked: they test the tools, not cdrflow (docs/testing.md)."""
