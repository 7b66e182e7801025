"""The consortium bucket policy: who may read and write what in the shared adapter exchange.

A consortium shares one bucket (ideally dedicated to it) and keeps its runs under a prefix::

    <prefix>/<run>/config.yaml
    <prefix>/<run>/rounds/NNNN/global/...          written by the coordinator
    <prefix>/<run>/rounds/NNNN/updates/<bank>/...  written by that bank only
    <prefix>/<run>/rounds/NNNN/MANIFEST.json       written by the coordinator
    <prefix>/<run>/privacy/<bank>.json             written by that bank only
    <prefix>/<run>/final/..., summary.json, report/

:func:`consortium_bucket_policy` turns that layout into an S3 bucket policy; apply it with
``put_bucket_policy``. Tested against a real Ceph radosgw (tests/test_s3_policy.py).
"""

from __future__ import annotations

import re
from typing import Any

POLICY_VERSION = "2012-10-17"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def bank_principal(uid: str) -> str:
    """The policy principal of an S3 user by its user id, as radosgw spells it.

    Ceph radosgw names a user without a tenant ``arn:aws:iam:::user/<uid>`` (an empty account
    field); a user in a tenant is ``<tenant>$<uid>``, which becomes ``arn:aws:iam::<tenant>:user/<uid>``.
    On AWS pass the IAM user or role ARN itself to :func:`consortium_bucket_policy` instead.

    Args:
        uid: the S3 user id (``radosgw-admin user create --uid``), optionally ``tenant$uid``.

    Returns:
        The principal ARN.

    Raises:
        ValueError: ``uid`` is empty or contains ``/``, ``*`` or ``?``.
    """
    if not uid or any(c in uid for c in "/*?"):
        raise ValueError(f"invalid S3 user id {uid!r}")
    tenant, sep, user = uid.partition("$")
    if sep:
        return f"arn:aws:iam::{tenant}:user/{user}"
    return f"arn:aws:iam:::user/{uid}"


def _principal(who: str) -> str:
    return who if who.startswith("arn:") else bank_principal(who)


def _sid(text: str) -> str:
    """A statement id (AWS allows only ASCII letters and digits)."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", text) if part)


def consortium_bucket_policy(*, bucket: str, prefix: str, coordinator: str, banks: dict[str, str]) -> dict[str, Any]:
    """An S3 bucket policy for the adapter exchange of one consortium.

    Who may do what:

    * The **coordinator** reads, writes, deletes and lists everything under ``<prefix>/``: it
      writes the config, the global adapters, the round manifests and the final adapter, and
      reads every bank's update and privacy ledger to aggregate and audit them.
    * Each **bank** lists and reads everything under ``<prefix>/`` (the config, the global
      adapter it trains from, the manifests; also the other banks' DP-noised updates, which
      the layout does not hide: use a separate prefix per bank if updates must stay private).
    * Each bank writes only its own keys, ``<prefix>/*/rounds/*/updates/<bank>/*`` (its update)
      and ``<prefix>/*/privacy/<bank>.json`` (its privacy ledger). It cannot write the global
      adapter, a manifest, or another bank's keys, and it cannot delete anything.

    Why the statements look the way they do:

    * Banks get ``s3:ListBucket`` with ``StringLikeIfExists`` on ``s3:prefix``: a listing that
      names a prefix must stay under ``<prefix>/``, and a request without a prefix is allowed.
      It has to be: when an object does not exist, S3 (AWS and radosgw alike) answers 404 only to
      a caller allowed ``s3:ListBucket`` on the bucket, evaluated *without* ``s3:prefix``, and 403
      to everyone else. A plain ``StringLike`` condition would therefore turn every
      ``exists()`` check on a missing key (a bank's first ``outcome.json``, a manifest not
      written yet) into AccessDenied. The price: a bank can list key *names* of the whole bucket
      with an unprefixed listing (not read objects outside the prefix), so give the consortium a
      bucket of its own.
    * ``*`` differs between servers: on radosgw a ``*`` followed by more pattern matches lazily
      up to the next occurrence of the following character (so ``<prefix>/*/rounds/`` matches
      exactly one run-name segment), on AWS it matches any run of characters including ``/``.
      The explicit **Deny** of other banks' update prefixes and privacy files keeps a bank out
      of them on both, whatever key it invents (e.g. ``.../updates/bank-b/x/updates/bank-a/y``
      matches bank A's allowed pattern on AWS); an explicit Deny beats any Allow.
    * A bank owns the objects it uploads, and S3 object ACLs give an owner the right to change
      the object's ACL. Banks are explicitly denied ``s3:PutObjectAcl`` and deletes, so they
      cannot publish their update or remove anything, even if bucket ACLs are loosened later.
    * Multipart uploads (large adapters) need ``s3:PutObject`` only; banks may also abort their
      own multipart uploads.

    Args:
        bucket: the bucket name.
        prefix: the key prefix that holds the consortium's runs (``""`` for the whole bucket).
        coordinator: the coordinator's principal ARN, or a bare S3 user id (see
            :func:`bank_principal`).
        banks: bank name (as used in keys, e.g. ``bank-a``) -> principal ARN or bare S3 user id.

    Returns:
        The policy document; ``json.dumps`` it for ``put_bucket_policy``.

    Raises:
        ValueError: an empty or malformed bucket, bank name or principal, no banks, or a bank whose
            principal is the coordinator's or another bank's.
    """
    if not bucket or "/" in bucket or "*" in bucket:
        raise ValueError(f"invalid bucket name {bucket!r}")
    if not banks:
        raise ValueError("a consortium needs at least one bank")
    prefix = prefix.strip("/")
    if any(c in prefix for c in "*?"):
        raise ValueError(f"the prefix {prefix!r} may not contain wildcards")
    coordinator_arn = _principal(coordinator)
    bank_arns: dict[str, str] = {}
    for name, who in banks.items():
        if not _NAME.match(name):
            raise ValueError(f"invalid bank name {name!r}: letters, digits, '.', '_' and '-' only")
        arn = _principal(who)
        if arn == coordinator_arn:
            raise ValueError(f"bank {name!r} has the coordinator's principal {arn}")
        if arn in bank_arns.values():
            raise ValueError(f"bank {name!r} shares its principal {arn} with another bank")
        bank_arns[name] = arn

    base = f"{prefix}/" if prefix else ""
    bucket_arn = f"arn:aws:s3:::{bucket}"
    everything = f"{bucket_arn}/{base}*"

    def own_keys(name: str) -> list[str]:
        return [
            f"{bucket_arn}/{base}*/rounds/*/updates/{name}/*",
            f"{bucket_arn}/{base}*/privacy/{name}.json",
        ]

    list_condition: dict[str, Any] = {}
    if prefix:
        list_condition = {"Condition": {"StringLikeIfExists": {"s3:prefix": [prefix, f"{prefix}/*"]}}}
    all_banks = sorted(bank_arns.values())

    statements: list[dict[str, Any]] = [
        {
            "Sid": "CoordinatorReadWriteUnderPrefix",
            "Effect": "Allow",
            "Principal": {"AWS": [coordinator_arn]},
            "Action": [
                "s3:GetObject",
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            ],
            "Resource": [everything],
        },
        {
            "Sid": "CoordinatorListsPrefix",
            "Effect": "Allow",
            "Principal": {"AWS": [coordinator_arn]},
            "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
            "Resource": [bucket_arn],
            **list_condition,
        },
        {
            "Sid": "BanksListPrefix",
            "Effect": "Allow",
            "Principal": {"AWS": all_banks},
            "Action": ["s3:ListBucket"],
            "Resource": [bucket_arn],
            **list_condition,
        },
        {
            "Sid": "BanksReadUnderPrefix",
            "Effect": "Allow",
            "Principal": {"AWS": all_banks},
            "Action": ["s3:GetObject"],
            "Resource": [everything],
        },
        {
            "Sid": "BanksNeverDeleteOrChangeAcls",
            "Effect": "Deny",
            "Principal": {"AWS": all_banks},
            "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl", "s3:PutObjectVersionAcl"],
            "Resource": [everything],
        },
    ]
    sids: set[str] = set()
    for name in sorted(bank_arns):
        sid = f"Bank{_sid(name)}"
        while sid in sids:  # bank-a and bank_a spell the same statement id
            sid += "X"
        sids.add(sid)
        statements.append(
            {
                "Sid": f"{sid}WritesOwnKeys",
                "Effect": "Allow",
                "Principal": {"AWS": [bank_arns[name]]},
                "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
                "Resource": own_keys(name),
            }
        )
        others = [key for other in sorted(bank_arns) if other != name for key in own_keys(other)]
        if others:
            statements.append(
                {
                    "Sid": f"{sid}NeverWritesOtherBanksKeys",
                    "Effect": "Deny",
                    "Principal": {"AWS": [bank_arns[name]]},
                    "Action": ["s3:PutObject"],
                    "Resource": others,
                }
            )
    return {"Version": POLICY_VERSION, "Statement": statements}
