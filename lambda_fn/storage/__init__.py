"""Storage: one Store for S3 and folders, verified downloads into the cache, publishing builds, and the small
JSON records (manifest, model pointer) beside them."""
