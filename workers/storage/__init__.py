"""The worker's storage: the batch transaction and its SQL, the writer that retries and
bisects it, the connections, the schema and its migrations. It imports nothing from the
steps around it (`workers.normalize`, `workers.outbox`): what they share is `workers.batch`."""
