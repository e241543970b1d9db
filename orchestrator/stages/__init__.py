"""One module per stage of an entry, in the order orchestrator/run.py runs them:
fetch, convert (with derive), simplify, verify (with the deploy contract and the localiser),
variants, runtimes; on the driver, accuracy (the merged shards' verdict) and package. Each
stage is a function of the entry's context (`context.EntryContext`) that fills its section
of the report."""
