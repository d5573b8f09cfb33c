"""`cdrflow console`: the operator's web console (server-rendered, login required)."""
