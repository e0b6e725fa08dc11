"""The trained policy: a transformers causal LM, its optimizer, and the RL update."""

from srpo.policy.policy import Policy, load_model_dir

__all__ = ["Policy", "load_model_dir"]
