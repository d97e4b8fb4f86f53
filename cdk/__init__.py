"""AWS CDK app for DeepFood: artifacts bucket, Docker-image search Lambda, REST API and the static site."""
