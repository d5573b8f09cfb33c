"""Reconciliation with the providers' own books (`docs/reconciliation.md`).

A pass lists a source's records in the provider's books window by window
(`reconciler.books_client`, within the provider's rate limit shared by every process
through PostgreSQL), compares them with `call_records` (`reconciler.compare`), sends
every record that is not stored into `cdr.raw` as a backfill of that source, and keeps each
window's outcome and each difference on what bills (`reconciler.tables`). One pass is
`reconciler.passes`; `cdrflow reconciler` runs them forever
(`reconciler.service`)."""
