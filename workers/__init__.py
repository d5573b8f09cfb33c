"""Workers: normalize, deduplicate, batch-store and publish call records."""
