"""Submit the pipeline for a config to a Kubeflow Pipelines API through the ``kfp`` SDK.

Before creating the run, the server's version is read and checked (:mod:`fedlora.pipeline.backend`),
and the run is named here (:func:`~fedlora.pipeline.run_names.generated_run_name`) unless the config
names it, so the backend's ``{{$.pipeline_job_name}}`` (resolved only from KFP 2.5) never decides.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlora.config import Config
from fedlora.pipeline.backend import check_backend, read_backend_version
from fedlora.pipeline.compile import compile_pipeline
from fedlora.pipeline.parameters import parameter_values
from fedlora.pipeline.run_names import generated_run_name

__all__ = ["Auth", "SubmitResult", "make_client", "run_arguments", "submit"]


@dataclass(frozen=True)
class Auth:
    """How to authenticate to the KFP API: whatever ``kfp.Client`` supports, passed through.

    Attributes:
        existing_token: A bearer token (e.g. ``kubectl create token`` or an OIDC id token).
        cookies: A cookie header value (e.g. Dex's ``authservice_session=...`` of a Kubeflow login).
        sa_token_path: A projected service-account token file (in-cluster access as a Kubeflow
            profile's service account; ``kfp.client.ServiceAccountTokenVolumeCredentials``).
        client_id: OAuth client id of an IAP-protected endpoint.
        other_client_id: OAuth client id for IAP from outside GCP.
        other_client_secret: Its secret.
        ssl_ca_cert: CA bundle that signs the API's certificate.
        verify_ssl: False to skip certificate checks (testing only).
        proxy: HTTP proxy URL.
        kube_context: kubeconfig context (for the kube-proxy path when no host is given).
    """

    existing_token: str | None = None
    cookies: str | None = None
    sa_token_path: str | None = None
    client_id: str | None = None
    other_client_id: str | None = None
    other_client_secret: str | None = None
    ssl_ca_cert: str | None = None
    verify_ssl: bool | None = None
    proxy: str | None = None
    kube_context: str | None = None


@dataclass(frozen=True)
class SubmitResult:
    """The created run.

    Attributes:
        run_id: KFP run id.
        url: The run's page in the Kubeflow Pipelines UI.
        experiment: The experiment it was filed under.
        namespace: The user namespace (multi-user Kubeflow), if any.
        run_name: The run's name (``output_run_name``: its folder in the exchange).
        backend: The KFP server's version (``tag_name``).
        warnings: What the backend lacks that the user should know (no retries, an unknown version).
    """

    run_id: str
    url: str
    experiment: str
    namespace: str | None
    run_name: str = ""
    backend: str = "unknown"
    warnings: list[str] = field(default_factory=list)


def make_client(
    host: str, *, namespace: str | None = None, auth: Auth | None = None, ui_host: str | None = None
) -> Any:
    """A ``kfp.Client`` for ``host`` with the given authentication."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    auth = auth or Auth()
    credentials = ServiceAccountTokenVolumeCredentials(auth.sa_token_path) if auth.sa_token_path else None
    return kfp.Client(
        host=host,
        namespace=namespace or "kubeflow",
        existing_token=auth.existing_token,
        cookies=auth.cookies,
        credentials=credentials,
        client_id=auth.client_id,
        other_client_id=auth.other_client_id,
        other_client_secret=auth.other_client_secret,
        ssl_ca_cert=auth.ssl_ca_cert,
        verify_ssl=auth.verify_ssl,
        proxy=auth.proxy,
        kube_context=auth.kube_context,
        ui_host=ui_host,
    )


def run_arguments(config: Config) -> dict[str, Any]:
    """The run's parameter values: every parameter, from the config (``None`` as ``0`` or ``""``)."""
    return parameter_values(config)


def submit(
    config: Config,
    *,
    host: str,
    namespace: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    image: str | None = None,
    secret: str | None = None,
    ca_bundle: str | None = None,
    secret_keys: tuple[str, ...] = (),
    service_account: str | None = None,
    auth: Auth | None = None,
    ui_host: str | None = None,
    client: Any = None,
) -> SubmitResult:
    """Compile the pipeline for ``config`` and create a run of it (caching off: tasks write the store).

    Args:
        config: The consortium's config; its rounds and banks shape the graph and its values
            are the run's parameters.
        host: The KFP API endpoint, e.g. ``https://kubeflow.example.com/pipeline``.
        namespace: The Kubeflow profile namespace to run in (multi-user Kubeflow).
        experiment: Experiment name (default: ``tracking.experiment``); created if missing.
        run_name: The run's display name in the UI (default: the run's name: ``output.run_name``, or when the
            config names none a fresh ``fedlora-YYYYMMDD-HHMMSS-xxxx`` passed as ``output_run_name``).
        image: The tasks' image (default: the control image).
        secret: Secret with credentials for every task (see ``build_pipeline``).
        ca_bundle: ConfigMap with the CA bundle every task trusts (see ``build_pipeline``).
        secret_keys: The keys ``secret`` holds (required with ``secret`` on KFP < 2.15); empty: all, optional.
        service_account: Kubernetes service account of the run's pods (multi-user Kubeflow runs them as
            ``default-editor`` otherwise; the banks' charts must bind the account named here).
        auth: Authentication passed to ``kfp.Client``.
        ui_host: Base URL of the UI for the printed link (default: ``host``).
        client: A ready ``kfp.Client`` (tests); otherwise one is made from host and auth.

    Returns:
        The run's id and URL.

    Raises:
        ValueError: the tasks' image is the unpublished placeholder default.
        UnsupportedBackend: (a ``ValueError``) the server's KFP version cannot run the pipeline as asked.
    """
    from fedlora.pipeline.components import CONTROL_IMAGE
    from fedlora.pipeline.pipeline import pipeline_image

    if pipeline_image(config, image) == CONTROL_IMAGE:
        raise ValueError(
            f"the tasks' image would be {CONTROL_IMAGE}, a placeholder nothing publishes: build and push "
            "images/control.Dockerfile, then pass --image REGISTRY/fedlora-control:TAG (or set kubeflow.control_image)"
        )
    client = client or make_client(host, namespace=namespace, auth=auth, ui_host=ui_host)
    backend = check_backend(read_backend_version(client), secret=secret, secret_keys=secret_keys)
    experiment = experiment or config.tracking.experiment
    arguments = run_arguments(config)
    name = config.output.run_name or generated_run_name()
    arguments["output_run_name"] = name
    with tempfile.TemporaryDirectory(prefix="fedlora-submit-") as tmp:
        package = compile_pipeline(
            config, Path(tmp) / "fedlora.yaml", image=image, secret=secret, ca_bundle=ca_bundle, secret_keys=secret_keys
        )
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments,
            run_name=run_name or name,
            experiment_name=experiment,
            namespace=namespace,
            enable_caching=False,
            service_account=service_account,
        )
    base = (ui_host or host).rstrip("/")
    if not base.startswith(("http://", "https://")):
        base = f"http://{base}"
    return SubmitResult(
        run_id=str(result.run_id),
        url=f"{base}/#/runs/details/{result.run_id}",
        experiment=experiment,
        namespace=namespace,
        run_name=name,
        backend=backend.tag,
        warnings=backend.warnings,
    )
