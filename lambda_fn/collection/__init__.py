"""The collection pipeline: S3 events, ingest, pending photos, reindex and its lease, and their Lambda handlers."""
