"""The shared contract: artifact layout and manifest, embedding shards, settings, metric and log names, the
page's config. Plain facts: no boto3, torch or PIL."""
