"""``fedlora compile`` and ``fedlora submit``: the Kubeflow Pipelines commands."""

from __future__ import annotations

import sys

import click

from fedlora.config import Config, ConfigError, load_config
from fedlora.configs import builtin_config_names

__all__ = ["compile_command", "submit_command"]

_CONFIG_HELP = (
    "Consortium config (YAML): banks, rounds, store, tracking..., or a built-in config by name "
    f"({', '.join(builtin_config_names())}). Default: the built-in defaults."
)
_SET_HELP = "Override one config field, e.g. --set privacy.target_epsilon=3 (repeatable)."


def _config(path: str | None, overrides: tuple[str, ...]) -> Config:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


# Options shared by `compile` and `submit` (one definition, one help text).
_config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), help=_CONFIG_HELP)
_set_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help=_SET_HELP)
_image_option = click.option(
    "--image", metavar="IMAGE", help="Image of every task (default: the FedLoRA control image)."
)
_secret_option = click.option(
    "--secret",
    metavar="NAME",
    help="Secret (in the run's namespace) whose keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, "
    "MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD (each optional) every task gets as "
    "environment variables. Default: the pods' own identity (IRSA, workload identity, a PodDefault).",
)
_secret_key_option = click.option(
    "--secret-key",
    "secret_keys",
    multiple=True,
    metavar="KEY",
    help="A key the --secret Secret holds (repeatable): only the keys named are mapped. Needed on KFP before 2.15, "
    "which ignores optional keys (a missing key keeps the pod from starting). Default: all six, each optional.",
)
_ca_bundle_option = click.option(
    "--ca-bundle",
    metavar="CONFIGMAP",
    help="ConfigMap (in the run's namespace) whose key ca.crt is the PEM bundle every task trusts (private CAs of "
    "internal S3 or MLflow endpoints; include the public roots if you also reach public endpoints).",
)


@click.command("compile")
@_config_option
@_set_option
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write the pipeline YAML (upload it in the Kubeflow Pipelines UI).",
)
@_image_option
@_secret_option
@_secret_key_option
@_ca_bundle_option
@click.option(
    "--components",
    "components_dir",
    type=click.Path(file_okay=False),
    help="Also write each reusable component's YAML into this folder.",
)
def compile_command(
    config_path: str | None,
    overrides: tuple[str, ...],
    output: str,
    image: str | None,
    secret: str | None,
    secret_keys: tuple[str, ...],
    ca_bundle: str | None,
    components_dir: str | None,
) -> None:
    """Compile the FedLoRA pipeline to a YAML file for Kubeflow Pipelines.

    The config's rounds and banks shape the graph: initialize -> round-1 -> … -> round-N -> finalize,
    each round task training every bank then aggregating (above kubeflow.max_graph_tasks - 2 rounds a
    task runs a chunk of rounds; kubeflow.graph=coordinator: one federate-rounds task). Every other
    field the UI can change is a run parameter named after the config field (privacy.target_epsilon ->
    privacy_target_epsilon), defaulting to the config's value.

    With no --config, `fedlora compile -o pipelines/fedlora.yaml` reproduces the committed pipeline.
    """
    from fedlora.pipeline.compile import compile_components, compile_pipeline

    config = _config(config_path, overrides)
    from fedlora.pipeline.pipeline import graph_mode

    try:
        path = compile_pipeline(
            config, output, image=image, secret=secret, ca_bundle=ca_bundle, secret_keys=secret_keys
        )
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    banks = ", ".join(b.name for b in config.federation.banks)
    graph = "a chain of round tasks" if graph_mode(config) == "rounds" else "one federate-rounds task"
    click.echo(f"pipeline: {path} ({config.federation.rounds} rounds, {graph}; banks {banks})")
    if components_dir:
        for component in compile_components(components_dir, **({"image": image} if image else {})):
            click.echo(f"component: {component}")


@click.command("submit")
@_config_option
@_set_option
@click.option(
    "--host",
    required=True,
    envvar="KF_PIPELINES_ENDPOINT",
    help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline (env KF_PIPELINES_ENDPOINT).",
)
@click.option("--namespace", help="Kubeflow profile namespace to run in (multi-user Kubeflow).")
@click.option("--experiment", help="Experiment of the run (default: tracking.experiment); created if missing.")
@click.option(
    "--run-name",
    help="Display name of the run in the UI (default: the run's name: output.run_name, or a fresh "
    "fedlora-YYYYMMDD-HHMMSS-xxxx that names the run's folder in the exchange).",
)
@_image_option
@_secret_option
@_secret_key_option
@_ca_bundle_option
@click.option(
    "--service-account",
    help="Kubernetes service account of the run's pods in the profile namespace (multi-user Kubeflow runs them as "
    "default-editor otherwise). Use a dedicated one, e.g. fedlora-pipeline, and name it in each bank's Helm values "
    "consortium.serviceAccount.",
)
@click.option("--token", "existing_token", envvar="KF_PIPELINES_TOKEN", help="Bearer token (env KF_PIPELINES_TOKEN).")
@click.option("--cookies", help="Cookie header of a logged-in Kubeflow session, e.g. 'authservice_session=...'.")
@click.option(
    "--sa-token-path",
    type=click.Path(dir_okay=False),
    help="Projected service-account token of a Kubeflow profile (in-cluster, e.g. from a notebook).",
)
@click.option("--client-id", help="OAuth client id of an IAP-protected endpoint.")
@click.option("--other-client-id", help="OAuth client id for IAP from outside GCP.")
@click.option("--other-client-secret", help="OAuth client secret for --other-client-id.")
@click.option("--ssl-ca-cert", type=click.Path(dir_okay=False), help="CA bundle of the endpoint's certificate.")
@click.option("--insecure-skip-tls-verify", is_flag=True, help="Do not verify the endpoint's certificate (testing).")
@click.option("--proxy", help="HTTP proxy URL.")
@click.option("--ui-host", help="Base URL of the Kubeflow Pipelines UI for the printed link (default: --host).")
def submit_command(
    config_path: str | None,
    overrides: tuple[str, ...],
    host: str,
    namespace: str | None,
    experiment: str | None,
    run_name: str | None,
    image: str | None,
    secret: str | None,
    secret_keys: tuple[str, ...],
    ca_bundle: str | None,
    service_account: str | None,
    existing_token: str | None,
    cookies: str | None,
    sa_token_path: str | None,
    client_id: str | None,
    other_client_id: str | None,
    other_client_secret: str | None,
    ssl_ca_cert: str | None,
    insecure_skip_tls_verify: bool,
    proxy: str | None,
    ui_host: str | None,
) -> None:
    """Compile the pipeline for a config and start a run on Kubeflow Pipelines; print the run's URL.

    The run's parameters are the config's values. Authentication options pass through to
    kfp.Client: a bearer token, session cookies, a profile's service-account token, or IAP.
    The server's KFP version is read first: below 2.3 (or below 2.15 with --secret and no
    --secret-key) nothing is created, and the message names the version and the reason.
    """
    from fedlora.pipeline.submit import Auth, submit

    config = _config(config_path, overrides)
    auth = Auth(
        existing_token=existing_token,
        cookies=cookies,
        sa_token_path=sa_token_path,
        client_id=client_id,
        other_client_id=other_client_id,
        other_client_secret=other_client_secret,
        ssl_ca_cert=ssl_ca_cert,
        verify_ssl=False if insecure_skip_tls_verify else None,
        proxy=proxy,
    )
    try:
        result = submit(
            config,
            host=host,
            namespace=namespace,
            experiment=experiment,
            run_name=run_name,
            image=image,
            secret=secret,
            ca_bundle=ca_bundle,
            secret_keys=secret_keys,
            service_account=service_account,
            auth=auth,
            ui_host=ui_host,
        )
    except ValueError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # the kfp SDK raises many types (ApiException, urllib3)
        click.echo(f"error: could not create the run on {host}: {exc}", err=True)
        sys.exit(1)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(
        f"run {result.run_id} ({result.run_name}) in experiment {result.experiment!r} on KFP {result.backend}", err=True
    )
    click.echo(result.url)
