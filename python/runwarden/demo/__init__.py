"""A small CPU-only model server for `runwarden demo` (and for trying runwarden by hand):
`/predict` with settable latency and status, `/stream` server-sent events, `/health`."""
