"""`make bench`: the pipeline against the limits of the machine it runs on.

Every figure is printed next to a limit measured in the same run, on the same machine,
with the same tool, because only ratios travel between shared machines:

- `serving`: the ingress against a bare aiohttp handler (the HTTP limit), under wrk;
- `limits`: confirmed publishes to a quorum queue (the publish limit) and a staged COPY
  upsert of the same rows (the database limit);
- `drain`: one worker draining a backlog (and, with --full, facing a million messages);
- `flow`: the whole pipeline end to end, and the lag at fixed offered rates;
- `hostile`: the worst inputs of docs/hostile-input.md, time per byte against a typical callback's.

The load is `mix` (each provider's own simulate()), sent by wrk with `callbacks.lua`;
`services` starts a private RabbitMQ node and PostgreSQL cluster; `table` prints."""
