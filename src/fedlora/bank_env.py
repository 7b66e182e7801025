"""A bank's Job environment (``fedlora train-bank``): the consortium's request plus the bank's own settings.

The consortium sends only the training request (``FEDLORA_REQUEST_CONFIG``, the run's config
as YAML). The bank's Helm release decides where its data is and how it reaches the exchange:

* ``FEDLORA_BANK_DATA``: the bank's data (a file or directory on its volume, or an
  ``s3://bucket/key-or-prefix`` in its private bucket, read with the
  ``FEDLORA_BANK_DATA_{ENDPOINT_URL,REGION,AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY}`` settings
  and downloaded to local scratch space, never to the exchange).
* ``FEDLORA_STORE_URI`` and ``FEDLORA_STORE_{ENDPOINT_URL,REGION,PATH_STYLE,SSE,SSE_KMS_KEY_ID}``:
  the exchange bucket as this bank reaches it. ``FEDLORA_STORE_URI`` is the exchange root
  (the consortium's ``store.uri``); runs live under it and the bank writes only its own keys.
* ``FEDLORA_BANK_POLICY``: the bank's privacy policy (JSON/YAML, the chart's ``privacyPolicy``
  values); absent = the conservative defaults of :class:`~fedlora.privacy.policy.BankPolicy`.
* ``FEDLORA_BANK_DATASET_ID``: the identity of the bank's dataset (the chart's ``ledger.datasetId``,
  an identifier; default ``default``). The ledger is keyed by it, so a data refresh of the same
  customers is charged to the same lifetime budget.
* ``FEDLORA_BANK_LEDGER``: where the bank's own privacy ledger lives, out of the coordinator's
  reach: a directory on the bank's volume, or ``s3://bucket/prefix`` in its private bucket
  (reached with the ``FEDLORA_BANK_DATA_*`` settings). Required: without it the Job refuses.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedlora.config import Config, ConfigError, load_config_text
from fedlora.names import check_name
from fedlora.privacy.policy import BankPolicy
from fedlora.store.base import Store

STORE_ENV = {
    "FEDLORA_STORE_URI": "uri",
    "FEDLORA_STORE_ENDPOINT_URL": "endpoint_url",
    "FEDLORA_STORE_REGION": "region",
    "FEDLORA_STORE_PATH_STYLE": "path_style",
    "FEDLORA_STORE_SSE": "sse",
    "FEDLORA_STORE_SSE_KMS_KEY_ID": "sse_kms_key_id",
}


def request_config(env: Mapping[str, str], *, config_text: str | None = None) -> Config:
    """The run's config from the request, with the bank's store settings from ``env`` applied.

    Raises:
        ConfigError: no request config, or the result does not validate (the message names the field).

    """
    text = config_text if config_text is not None else env.get("FEDLORA_REQUEST_CONFIG")
    if not text:
        raise ConfigError("no training request: FEDLORA_REQUEST_CONFIG is empty and no --config was given")
    overrides = [f"store.{field}={env[name]}" for name, field in STORE_ENV.items() if env.get(name)]
    return load_config_text(text, source="the training request (FEDLORA_REQUEST_CONFIG)", overrides=overrides)


def bank_policy(env: Mapping[str, str]) -> BankPolicy:
    """The bank's policy from ``FEDLORA_BANK_POLICY`` (the defaults when unset).

    Raises:
        PolicyError: the policy text is invalid.

    """
    text = env.get("FEDLORA_BANK_POLICY", "").strip()
    return BankPolicy.from_text(text) if text else BankPolicy.model_validate({})


def bank_dataset_id(env: Mapping[str, str]) -> str:
    """The dataset identity the bank declares (``FEDLORA_BANK_DATASET_ID``; ``default`` when unset).

    Raises:
        InvalidName: it is not an identifier (a DNS label).
    """
    return check_name(env.get("FEDLORA_BANK_DATASET_ID", "").strip() or "default", kind="dataset")


def _private_s3_client(env: Mapping[str, str]) -> Any:
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=env.get("FEDLORA_BANK_DATA_ENDPOINT_URL") or None,
        region_name=env.get("FEDLORA_BANK_DATA_REGION") or None,
        aws_access_key_id=env.get("FEDLORA_BANK_DATA_AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("FEDLORA_BANK_DATA_AWS_SECRET_ACCESS_KEY") or None,
    )


def bank_ledger_store(env: Mapping[str, str]) -> Store:
    """The bank's own ledger store from ``FEDLORA_BANK_LEDGER`` (a directory or ``s3://`` in its private bucket).

    Raises:
        ConfigError: the variable is unset (the chart always sets it).

    """
    uri = env.get("FEDLORA_BANK_LEDGER", "").strip()
    if not uri:
        raise ConfigError(
            "FEDLORA_BANK_LEDGER is not set: the bank's privacy ledger must live in the bank's own storage "
            "(chart values ledger.pvc.claimName or ledger.uri); refusing to train without it"
        )
    if uri.startswith("s3://"):
        from fedlora.store.s3 import S3Store, parse_s3_uri

        bucket, prefix = parse_s3_uri(uri)
        return S3Store(bucket=bucket, prefix=prefix, client=_private_s3_client(env))
    from fedlora.store.local import LocalStore

    return LocalStore(Path(uri))


def fetch_private_data(uri: str, env: Mapping[str, str], *, scratch: Path | None = None) -> Path:
    """Download the bank's data from its private bucket into local scratch space; return the local path.

    ``uri`` is ``s3://bucket/key`` (one file) or ``s3://bucket/prefix/`` (every ``.csv`` /
    ``.parquet`` under it, read as one table).
    """
    from fedlora.store.s3 import parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    client = _private_s3_client(env)
    target = Path(tempfile.mkdtemp(prefix="fedlora-bank-data-", dir=scratch))
    if uri.endswith("/") or not key:
        listing = client.list_objects_v2(Bucket=bucket, Prefix=key)
        names = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith((".csv", ".parquet"))]
        if not names:
            raise FileNotFoundError(f"{uri}: no .csv or .parquet objects under this prefix")
        for name in names:
            client.download_file(bucket, name, str(target / Path(name).name))
        return target
    local = target / Path(key).name
    client.download_file(bucket, key, str(local))
    return local


def bank_data_path(env: Mapping[str, str]) -> str | None:
    """Where this bank's data is, locally (downloading it first from a private bucket)."""
    data = env.get("FEDLORA_BANK_DATA")
    if not data:
        return None
    if data.startswith("s3://"):
        return str(fetch_private_data(data, env))
    return data


def environment() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
