"""Kubeflow shell: components, the pipeline built from a config, compilation and submission.

Importing this package needs the ``kfp`` extra; :mod:`fedlora.pipeline.task_bodies` is what the
components call.
"""
