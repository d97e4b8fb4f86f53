"""Command-line tools an operator runs against a deployment or the local demo."""
