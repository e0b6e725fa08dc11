"""The shipped tiny example and run files built from it."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny"


def tiny_config(out: Path, **overrides: object) -> dict:
    """The tiny example's run file with absolute paths and a small, fast budget."""
    cfg = yaml.safe_load((TINY / "math_grpo.yaml").read_text())
    cfg["policy"]["path"] = str(TINY / "model")
    for section in ("datasets",):
        for spec in cfg[section].values():
            spec["path"] = str(TINY / spec["path"])
    for spec in cfg.get("eval", {}).get("datasets", {}).values():
        spec["path"] = str(TINY / spec["path"])
    cfg["run"]["output_dir"] = str(out / "run")
    cfg["run"]["max_steps"] = 3
    cfg["run"]["prompts_per_step"] = 8
    cfg["eval"]["max_prompts"] = 32
    return set_dotted(cfg, overrides)


def set_dotted(cfg: dict, overrides: dict[str, object]) -> dict:
    """Set ``{"a.b.c": value}`` keys in a nested run-file dict (creating sections)."""
    for dotted, value in overrides.items():
        cur = cfg
        keys = dotted.split(".")
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
    return cfg
