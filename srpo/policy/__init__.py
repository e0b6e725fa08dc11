"""The trained policy: a transformers causal LM, its optimizer, and the RL update."""

from srpo.policy.loading import load_model_dir
from srpo.policy.policy import Policy

__all__ = ["Policy", "load_model_dir"]
