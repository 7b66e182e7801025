"""``fedlora consortium``: the consortium operator's setup commands (what each bank gets from its Helm chart)."""

from __future__ import annotations

import json
import sys

import click

from fedlora.config import ConfigError, load_config

__all__ = ["consortium_group"]


@click.group("consortium")
def consortium_group() -> None:
    """Set up the consortium's side: the exchange bucket's policy (see the README's consortium walkthrough)."""


def _principals(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, principal = pair.partition("=")
        if not sep or not name.strip() or not principal.strip():
            raise click.BadParameter(
                f"{pair!r}: expected BANK=PRINCIPAL (an ARN or an S3 user id)", param_hint="--bank"
            )
        out[name.strip()] = principal.strip()
    return out


@consortium_group.command("bucket-policy")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True, help="The consortium config.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one config field.")
@click.option(
    "--coordinator",
    required=True,
    metavar="PRINCIPAL",
    help="The coordinator's principal: an IAM role/user ARN (the pipeline's identity) or an S3 user id (Ceph/MinIO).",
)
@click.option(
    "--bank",
    "banks",
    multiple=True,
    metavar="BANK=PRINCIPAL",
    help="Each bank's principal, one --bank per bank of the config (its trainer's identity).",
)
@click.option("--apply", is_flag=True, help="Put the policy on the bucket (credentials from the AWS chain).")
def bucket_policy_command(
    config_path: str, overrides: tuple[str, ...], coordinator: str, banks: tuple[str, ...], apply: bool
) -> None:
    """Print (or --apply) the exchange bucket's policy for a consortium config.

    The coordinator reads and writes the store.uri prefix; each bank reads it and writes only its own
    update and privacy report keys (fedlora.store.policy.consortium_bucket_policy). Every bank of the
    config needs a --bank.
    """
    from fedlora.store.policy import consortium_bucket_policy
    from fedlora.store.s3 import parse_s3_uri

    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    uri = config.store.uri or ""
    if not uri.startswith("s3://"):
        click.echo(f"error: store.uri must be s3://bucket/prefix for a bucket policy, not {uri or 'empty'!r}", err=True)
        sys.exit(2)
    bucket, prefix = parse_s3_uri(uri)
    principals = _principals(banks)
    names = [b.name for b in config.federation.banks]
    missing = [n for n in names if n not in principals]
    unknown = [n for n in principals if n not in names]
    if missing or unknown:
        click.echo(
            f"error: --bank needed for {missing or 'none'}; not banks of the config: {unknown or 'none'}", err=True
        )
        sys.exit(2)
    try:
        policy = consortium_bucket_policy(bucket=bucket, prefix=prefix, coordinator=coordinator, banks=principals)
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    text = json.dumps(policy, indent=2)
    if not apply:
        click.echo(text)
        return
    import boto3
    from botocore.config import Config as BotoConfig

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=config.store.endpoint_url,
        region_name=config.store.region,
        config=BotoConfig(s3={"addressing_style": "path" if config.store.path_style else "auto"}),
    )
    try:
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    except Exception as exc:  # botocore raises ClientError and connection errors
        click.echo(f"error: could not put the policy on s3://{bucket}: {exc}", err=True)
        sys.exit(1)
    click.echo(
        f"policy applied to s3://{bucket} ({len(policy['Statement'])} statements, prefix {prefix or '(whole bucket)'})"
    )
