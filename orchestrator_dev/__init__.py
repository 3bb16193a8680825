"""The repository's own tools, installed by the example site alone and left out of the
distribution: `manage.py bench` (and its helpers in `bench.py`), `docs_schema`, `demo`
and `createadmin`."""
