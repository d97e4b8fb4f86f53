"""Links the browser can load a collection image from."""

from __future__ import annotations

from urllib.parse import quote

from lambda_fn.contract.config import Settings
from lambda_fn.storage.store import Location, s3_client

# Where the local server serves the collection folder (see lambda_fn.search.local).
LOCAL_IMAGES_ROUTE = "/files"


class ImageLinker:
    """A public base URL when configured, else presigned S3 GET URLs, else the local server's route."""

    def __init__(self, settings: Settings, client=None):
        self.base_url = settings.images_base_url.rstrip("/") if settings.images_base_url else None
        self.location = Location.parse(settings.resolved_images_uri)
        self.expires = settings.presign_expires_s
        self._client = client

    def url(self, key: str) -> str:
        if self.base_url:
            return f"{self.base_url}/{quote(key)}"
        if self.location.is_s3:
            self._client = self._client or s3_client()
            return self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.location.bucket, "Key": self.location.prefix + key},
                ExpiresIn=self.expires,
            )
        return f"{LOCAL_IMAGES_ROUTE}/{quote(key)}"
