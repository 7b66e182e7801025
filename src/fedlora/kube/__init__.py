"""Kubernetes shell: the trainer Job template in each bank's Helm chart, and the bank agent's Job launcher."""

from fedlora.kube.job_template import (
    LAUNCHER_ENV_PREFIX,
    TEMPLATE_KEY,
    TEMPLATE_LABELS,
    TRAINER_CONTAINER,
    JobTemplate,
    JobTemplateError,
    job_template_from_configmap,
    parse_job_template,
    render_job,
)

__all__ = [
    "LAUNCHER_ENV_PREFIX",
    "TEMPLATE_KEY",
    "TEMPLATE_LABELS",
    "TRAINER_CONTAINER",
    "JobTemplate",
    "JobTemplateError",
    "job_template_from_configmap",
    "parse_job_template",
    "render_job",
]
