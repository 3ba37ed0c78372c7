"""Every database query of trainlab, one module per feature; nothing here commits.

``jobs`` (lifecycle, claiming, listing), ``telemetry`` (run plan, metrics, statistics,
histograms, landscape), ``sweeps``, ``datasets``, ``health``; ``keyset`` holds the one
keyset-pagination condition they share. Functions take keyword-only arguments and a
caller's session: the use case that calls them owns the transaction (API use cases
commit what they change; the worker commits each batch of writes).
"""
