"""Model and tokenizer from a local transformers directory, with one-line errors.

Its own module because the policy, its reference model and tools that only need the weights
(``load_model_dir`` is public) load the same way, without the optimizer or the update.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from srpo.errors import SrpoError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def load_model_dir(path: Path, dtype: str = "float32") -> tuple[Any, PreTrainedTokenizerBase]:
    """Model + tokenizer from a local HF directory; a one-line error if it is not one."""
    if not path.is_dir():
        raise SrpoError(f"{path}: model directory not found")
    if not (path / "config.json").exists():
        raise SrpoError(f"{path}: not a transformers model directory (no config.json)")
    hf_logging.disable_progress_bar()  # srpo draws its own progress; keep the console clean
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    except (OSError, ValueError) as e:
        raise SrpoError(f"{path}: cannot load model: {str(e).splitlines()[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
