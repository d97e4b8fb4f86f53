"""What storage failures say: ``ArtifactError`` carries two texts, ``str(exc)``, the operator's detail (object
URIs, paths, the underlying error) for the logs, and ``public``, what an API client may read: what is wrong
and what to do."""

from __future__ import annotations

from botocore.exceptions import ClientError

from lambda_fn.contract.config import env_name
from lambda_fn.contract.manifest import COLLECTION_FILE, INDEX_FILE, KEYS_FILE, MANIFEST_FILE, MODEL_FILE

# What a client reads when the raiser gave no public text: the engine's own checks (dims, counts, TorchScript),
# whose messages name files and quote library errors, so they go to the logs only.
GENERIC_PUBLIC = (
    "the published build could not be loaded: its files are corrupt, come from different builds, or hold a "
    "model this service cannot run; publish the build again with `python -m ops.upload` (the service's "
    "logs have the details)"
)
# How a public message names each file of a build: its role and the name training gives it, never the key or
# path the manifest or the settings give.
ROLES = {
    "model": f"the model ({MODEL_FILE})",
    "index": f"the index ({INDEX_FILE})",
    "keys": f"the key map ({KEYS_FILE})",
    "collection": f"the collection shard ({COLLECTION_FILE})",
}
MANIFEST_ROLE = f"the manifest ({MANIFEST_FILE})"
MISCONFIGURED = (
    f"the artifacts location is not configured correctly; set {env_name('artifacts_uri')} to s3://bucket/prefix/ "
    "or a folder"
)


class ArtifactError(RuntimeError):
    """Artifacts are missing, corrupt or do not belong together. ``str()`` is the detail for the logs;
    ``public`` says what is wrong and what to do, without locations or library messages."""

    def __init__(self, detail: str, public: str | None = None):
        super().__init__(detail)
        self.public = public or GENERIC_PUBLIC


class RefusedModel(ArtifactError):
    """A model this deployment will not run, whatever retries: ``published`` is its sha256."""

    def __init__(self, published: str, detail: str, public: str):
        super().__init__(detail, public)
        self.published = published


class UntrustedModel(RefusedModel):
    """The manifest names a model other than the one this deployment pins (``trusted_model_sha256``)."""

    def __init__(self, published: str, trusted: str):
        setting = env_name("trusted_model_sha256")
        super().__init__(
            published,
            f"the manifest names model sha256 {published}, not the one this deployment trusts: {setting} pins "
            f"{trusted}",
            f"the published model (sha256 {published[:12]}…) is not the one this deployment trusts ({setting} "
            f"{trusted[:12]}…): if that model is yours, deploy again with {setting} set to its sha256; "
            "otherwise publish the trusted model's build again",
        )
        self.trusted = trusted


# Says neither which key, nor where the signature is, nor what KMS answered: those go to the logs.
UNSIGNED_PUBLIC = (
    "the published model is not signed by this deployment's model publisher, so it is not run; the publisher "
    "signs it when publishing it (`python -m ops.upload --signing-key`, docs/deploy.md)"
)


class UnsignedModel(RefusedModel):
    """The model carries no valid signature by this deployment's publisher (``model_signing_key``)."""

    def __init__(self, published: str, detail: str):
        super().__init__(
            published, f"model sha256 {published} is not signed by the publisher: {detail}", UNSIGNED_PUBLIC
        )
        self.detail = detail


def check_trusted(sha256: str, trusted: str | None) -> None:
    """Raise ``UntrustedModel`` when ``trusted`` is set and the model is another. Called before the model is
    downloaded, hashed or loaded: a TorchScript file is a program."""
    if trusted and sha256 != trusted:
        raise UntrustedModel(sha256, trusted)


def missing(what: str, role: str) -> ArtifactError:
    """``what`` (an object URI or path), the file of ``role``, does not exist."""
    return ArtifactError(
        f"{what} does not exist; upload the artifacts with `python -m ops.upload`",
        f"{role} does not exist: no build is published, or not all of it; publish one with `python -m ops.upload`",
    )


def s3_error(exc: Exception, what: str, role: str) -> ArtifactError:
    """The ArtifactError for an S3 failure (a ClientError or BotoCoreError) reading ``what``, the file of ``role``."""
    if not isinstance(exc, ClientError):
        return ArtifactError(
            f"S3 is unreachable while reading {what}: {exc}", f"S3 is unreachable or too slow while reading {role}"
        )
    code = exc.response.get("Error", {}).get("Code", "")
    if code in ("NoSuchKey", "404", "NotFound"):
        return missing(what, role)
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return ArtifactError(
            f"access to {what} was denied ({code}): it may not be uploaded yet (S3 answers 403 for a "
            "missing object when listing is not allowed) - run `python -m ops.upload` - or the "
            "function's IAM role and the bucket name are wrong",
            f"access to {role} was denied: it may not be published yet (`python -m ops.upload`), or the "
            "function may not read it",
        )
    if code == "NoSuchBucket":
        return ArtifactError(
            f"the bucket of {what} does not exist; check {env_name('artifacts_uri')}",
            f"the artifacts bucket does not exist; check {env_name('artifacts_uri')}",
        )
    return ArtifactError(f"S3 refused {what}: {code or exc}", f"S3 refused to serve {role}; the service retries")
