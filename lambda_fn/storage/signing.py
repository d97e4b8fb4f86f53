"""Models only their publisher can ship: a model is loaded only with its publisher's signature over its sha256.

The publisher signs with an AWS KMS asymmetric key (``ECC_NIST_P256``, ``kms:Sign``, which no function role
holds); the functions check with ``kms:Verify`` (``model_signing_key``). Verify rather than ``GetPublicKey``
and a local check: the Lambda image has boto3 but no crypto library, the private key never leaves KMS, and
disabling the key stops every container that has not verified a model yet. It costs one call per model per
container: a model's verdict is kept for the container's life.

The signature is a small object beside the model's content address, ``models/<sha256>/signature.json``
(``ModelSignature``), not a field of the manifest or the pointer: the reindex rewrites the manifest and cannot
sign, and the manifest and ``models/current.json`` name the same model by the same sha256. The signed message
(``signed_message``) names this purpose and the sha256, so a signature made by the key for anything else, or
for another model, does not verify. Whoever may write the bucket may write this object too; without the key
they cannot make one that verifies. They may still name an older model its publisher signed (a rollback),
which a pinned model (``trusted_model_sha256``) rules out.
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field, ValidationError

from lambda_fn.contract.manifest import MODELS_PREFIX, Sha256
from lambda_fn.storage.errors import ArtifactError, UnsignedModel, check_trusted
from lambda_fn.storage.store import NotFound, Store

log = logging.getLogger(__name__)

SIGNING_ALGORITHM = "ECDSA_SHA_256"
KEY_SPEC = "ECC_NIST_P256"
SIGNATURE_NAME = "signature.json"
# A verify call is small: give up quickly and let the caller's retry (backoff, SQS redelivery) try again.
KMS_CONFIG = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"})
UNCHECKED_PUBLIC = "the published model's signature could not be checked just now; the service retries"

# (key, sha256) of the models whose signature this container verified.
_verified: set[tuple[str, str]] = set()


class ModelSignature(BaseModel):
    """``models/<sha256>/signature.json``: the publisher's signature over ``signed_message(model_sha256)``."""

    model_sha256: Sha256
    signature: str = Field(description="Base64 of the DER signature KMS returned")
    algorithm: str = SIGNING_ALGORITHM
    key_id: str = Field(description="The key that signed, as KMS named it (informative: verification uses the setting)")
    signed_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def signature_key(sha256: str) -> str:
    return f"{MODELS_PREFIX}{sha256}/{SIGNATURE_NAME}"


def signed_message(sha256: str) -> bytes:
    """What is signed: the purpose and the model's sha256, so a signature cannot be replayed for anything else."""
    return f"deepfood-model-v1\nsha256:{sha256}\n".encode()


def kms_client():
    """boto3 KMS client (honours AWS_ENDPOINT_URL, as the S3 client does)."""
    return boto3.client("kms", config=KMS_CONFIG)


def sign_model(sha256: str, key_id: str, *, kms=None) -> ModelSignature:
    """The publisher's side: ``kms:Sign`` over ``signed_message(sha256)``."""
    answer = (kms or kms_client()).sign(
        KeyId=key_id, Message=signed_message(sha256), MessageType="RAW", SigningAlgorithm=SIGNING_ALGORITHM
    )
    return ModelSignature(
        model_sha256=sha256, signature=base64.b64encode(answer["Signature"]).decode(), key_id=answer["KeyId"]
    )


def verify_signed(store: Store, sha256: str, key_id: str, *, kms=None) -> None:
    """Raise ``UnsignedModel`` unless ``models/<sha256>/signature.json`` holds a signature by ``key_id`` over
    this sha256; ``ArtifactError`` when it cannot be checked now (S3 or KMS failing: retried, never cached).
    Called before the model is downloaded: a TorchScript file is a program."""
    if (key_id, sha256) in _verified:
        return
    where = store.describe(signature_key(sha256))
    try:
        body, _ = store.get(signature_key(sha256))
    except NotFound:
        raise UnsignedModel(sha256, f"{where} does not exist") from None
    except (ClientError, BotoCoreError, OSError) as exc:
        raise ArtifactError(f"{where} could not be read: {exc}", UNCHECKED_PUBLIC) from exc
    try:
        signature = ModelSignature.model_validate_json(body)
        raw = base64.b64decode(signature.signature, validate=True)
    except (ValidationError, ValueError) as exc:
        raise UnsignedModel(sha256, f"{where} is not a valid signature record: {exc}") from None
    if signature.model_sha256 != sha256:
        raise UnsignedModel(sha256, f"{where} signs model {signature.model_sha256}, not this one")
    try:
        answer = (kms or kms_client()).verify(
            KeyId=key_id,
            Message=signed_message(sha256),
            MessageType="RAW",
            Signature=raw,
            SigningAlgorithm=SIGNING_ALGORITHM,
        )
        valid = bool(answer.get("SignatureValid"))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "KMSInvalidSignatureException":
            raise ArtifactError(f"KMS could not verify {where} with {key_id}: {exc}", UNCHECKED_PUBLIC) from exc
        valid = False  # what KMS answers for a signature by another key, or over another message
    except BotoCoreError as exc:
        raise ArtifactError(f"KMS is unreachable while verifying {where}: {exc}", UNCHECKED_PUBLIC) from exc
    if not valid:
        raise UnsignedModel(sha256, f"{where} is not a valid signature by {key_id} (signed by {signature.key_id})")
    _verified.add((key_id, sha256))
    log.info("model signature verified", extra={"model_sha256": sha256, "key_id": key_id})


def remember_verified(sha256: str, key_id: str) -> None:
    """Record a verdict reached in another process of this container (the search service's prefetch)."""
    _verified.add((key_id, sha256))


def check_model(
    store: Store, sha256: str, *, trusted_model_sha256: str | None = None, model_signing_key: str | None = None
) -> None:
    """Every check a model passes before it is downloaded: the pinned sha256, then the publisher's signature.
    Raises ``UntrustedModel``, ``UnsignedModel``, or ``ArtifactError`` when a check cannot run now."""
    check_trusted(sha256, trusted_model_sha256)
    if model_signing_key:
        verify_signed(store, sha256, model_signing_key)
