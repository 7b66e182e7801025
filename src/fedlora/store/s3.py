"""A store in an S3 bucket (AWS, MinIO, Ceph radosgw) with the same run layout as the local store.

Every object carries the sha256 of its bytes in its user metadata (``x-amz-meta-sha256``)
and is verified on download. An S3 PUT is atomic (a reader sees the whole object or none),
so together with the manifest written last a reader never sees half a round.

Errors are split in two: transient ones (connection refused or reset, timeouts, HTTP 5xx,
``SlowDown``) are retried with exponential backoff for up to ``retry_seconds``; permanent
ones (access denied, bad credentials, no such bucket) raise :class:`StoreError` at once with
the key and the server's reason.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fedlora.store.base import IntegrityError, StoreError, check_key

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "Throttling"}
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not uri.startswith("s3://"):
        raise StoreError(f"{uri!r} is not an s3:// URI", kind="invalid uri")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise StoreError(f"{uri!r} names no bucket", kind="invalid uri")
    return bucket, prefix.strip("/")


class _NotFoundError(StoreError):
    """The object (or, on a HEAD request, possibly the bucket) does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="not found")


def _is_transient(exc: Exception) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ConnectionError | HTTPClientError):  # refused, reset, timeouts
        return True
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in TRANSIENT_CODES or status >= 500
    return False


def _error_code(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


class S3Store:
    """Keys are object names under ``s3://bucket/prefix/``.

    Credentials come from the standard AWS chain (environment, shared profile, web identity
    token, instance metadata); nothing secret is read from the FedLoRA config.
    """

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        sse: str = "none",
        sse_kms_key_id: str | None = None,
        retry_seconds: float = 60.0,
        client: S3Client | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.retry_seconds = retry_seconds
        self._extra: dict[str, str] = {}
        if sse != "none":
            self._extra["ServerSideEncryption"] = sse
            if sse_kms_key_id:
                self._extra["SSEKMSKeyId"] = sse_kms_key_id
        if client is None:
            import boto3
            from botocore.config import Config as BotoConfig

            boto_config = BotoConfig(
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path" if path_style else "auto"},
            )
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=boto_config
            )
        self.client = client
        self._bucket_checked = False

    def _key(self, key: str) -> str:
        check_key(key, prefix=True)  # "" and "dir/" name the prefix itself (uri, list)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}" if key else f"s3://{self.bucket}/{self.prefix}"

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; retry transient errors with backoff until ``retry_seconds`` have passed.

        Raises:
            _NotFoundError: S3 answered "not found" (callers decide what that means).
            StoreError: a permanent error (with a hint) or S3 unavailable past ``retry_seconds``.

        """
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.5
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:
                if _error_code(exc) in NOT_FOUND_CODES:
                    raise _NotFoundError(f"{self.uri(key)}: not found") from exc
                if not _is_transient(exc):
                    raise self._permanent(what, key, exc) from exc
                if time.monotonic() + delay > deadline:
                    raise StoreError(
                        f"{what} {self.uri(key)}: S3 still unavailable after {attempt} attempts over "
                        f"{self.retry_seconds:.0f}s: {exc}",
                        kind="unavailable",
                    ) from exc
                log.warning("%s %s: transient S3 error (%s); retrying in %.1fs", what, self.uri(key), exc, delay)
                time.sleep(delay * (0.5 + random.random()))  # jitter, not security
                delay = min(delay * 2, 10.0)

    def _permanent(self, what: str, key: str, exc: Exception) -> StoreError:
        code = _error_code(exc) or type(exc).__name__
        hints = {
            "AccessDenied": "the credentials in use are not allowed to do this (bucket policy or IAM)",
            "InvalidAccessKeyId": "unknown access key: check AWS_ACCESS_KEY_ID / the profile in use",
            "SignatureDoesNotMatch": "wrong secret key: check AWS_SECRET_ACCESS_KEY / the profile in use",
            "NoSuchBucket": f"bucket {self.bucket!r} does not exist",
            "NoCredentialsError": "no AWS credentials found (environment, profile or web identity)",
            "403": "forbidden: wrong or unknown credentials, or a bucket policy that does not allow this",
        }
        if code == "InvalidRequest" and "ServerSideEncryption" in self._extra:
            hints[code] = (
                f"the server refused server-side encryption {self._extra['ServerSideEncryption']!r} "
                "(not configured there, or it requires TLS); check store.sse"
            )
        hint = hints.get(code, str(exc))
        kind = "no such bucket" if code == "NoSuchBucket" else "access denied" if code in hints else "failed"
        return StoreError(f"{what} {self.uri(key)} failed: {code}: {hint}", kind=kind)

    @property
    def _base(self) -> str:
        """``<prefix>/`` (or ``""`` without a prefix): what every key of this store starts with."""
        return f"{self.prefix}/" if self.prefix else ""

    def check(self) -> None:
        """Fail early (before anything is written) when the bucket is unreachable or access is denied."""
        self._call("open", "", lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._base, MaxKeys=1))

    def put(self, key: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        full = self._key(key)
        self._call(
            "upload",
            key,
            lambda: self.client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                Metadata={"sha256": digest},
                **self._extra,  # type: ignore[arg-type]
            ),
        )

    def get(self, key: str) -> bytes:
        full = self._key(key)

        def fetch() -> tuple[bytes, dict[str, str]]:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            return response["Body"].read(), dict(response.get("Metadata", {}))

        data, meta = self._call("download", key, fetch)
        expected = meta.get("sha256")
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise IntegrityError(f"{self.uri(key)}: downloaded bytes do not match the object's sha256 metadata")
        return data

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._call("check", key, lambda: self.client.head_object(Bucket=self.bucket, Key=full))
        except _NotFoundError:
            self._require_bucket()  # a HEAD on a missing bucket is a bare 404 too
            return False
        return True

    def local_path(self, key: str) -> Path | None:
        return None

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def _require_bucket(self) -> None:
        if self._bucket_checked:
            return
        try:
            self._call("open", "", lambda: self.client.head_bucket(Bucket=self.bucket))
        except _NotFoundError as exc:
            raise StoreError(
                f"open {self.uri('')} failed: NoSuchBucket: bucket {self.bucket!r} does not exist",
                kind="no such bucket",
            ) from exc
        self._bucket_checked = True

    def list(self, prefix: str) -> list[str]:
        base = self._base
        keys: list[str] = []

        def page(token: str | None) -> dict[str, Any]:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": base + check_key(prefix, prefix=True)}
            if token:
                kwargs["ContinuationToken"] = token
            return dict(self.client.list_objects_v2(**kwargs))

        token: str | None = None
        while True:
            response = self._call("list", prefix, lambda token=token: page(token))  # type: ignore[misc]
            keys.extend(str(obj["Key"])[len(base) :] for obj in response.get("Contents", []))
            if not response.get("IsTruncated"):
                return sorted(keys)
            token = str(response["NextContinuationToken"])
