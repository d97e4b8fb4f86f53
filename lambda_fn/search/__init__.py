"""The search service: the FastAPI app served by Mangum, its routes, uploads, URL fetch, state and hot swap."""
