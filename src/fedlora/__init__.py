"""FedLoRA: federated, differentially private LoRA fine-tuning of language models for credit risk."""

import warnings

__version__ = "0.1.0"

# Opacus' RDP accountant warns when the optimal Rényi order is at the edge of its grid; the
# bound it returns is still valid (only possibly looser), and the default accountant is PRV.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
