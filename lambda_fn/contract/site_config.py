"""``config.json``: what the static page reads when it starts.

The local server answers it (``lambda_fn.search.local``) and the deployment writes it into the site bucket
(``cdk.website``); both build it here.
"""

from __future__ import annotations

from lambda_fn.contract.manifest import DEFAULT_RESIZE_SIZE

CONFIG_FILE = "config.json"


def site_config(*, api_base_url: str) -> dict[str, str | int]:
    """``apiBaseUrl`` ("" = the page's own origin) and ``defaultResizeSize``, the shorter side the page shrinks
    uploads to until ``/health`` names the loaded model's."""
    return {"apiBaseUrl": api_base_url, "defaultResizeSize": DEFAULT_RESIZE_SIZE}
