"""The images this repository builds (``images/*.Dockerfile``), tagged with the package's version."""

from fedlora import __version__

__all__ = ["CONTROL_IMAGE", "TRAINER_IMAGE"]

CONTROL_IMAGE = f"ghcr.io/fedlora/fedlora-control:{__version__}"
"""Default image of every pipeline task (``images/control.Dockerfile``); ``fedlora compile --image`` changes it."""

TRAINER_IMAGE = f"ghcr.io/fedlora/fedlora:{__version__}"
"""GPU trainer image (``images/trainer.Dockerfile``); the banks' Helm charts run it, the pipeline does not."""
