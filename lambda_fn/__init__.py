"""DeepFood search service: FastAPI app served by AWS Lambda through Mangum."""

__version__ = "0.1.0"
