"""AWS CDK app for DeepFood: artifacts bucket, Docker-image search, ingest and reindex Lambdas, REST API and
the static site."""
