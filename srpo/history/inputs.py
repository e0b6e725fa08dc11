"""The writer's inputs: caller columns (numpy, torch CPU, scalars) -> on-disk dtypes.

Range-checked, never a silent wrap-around.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from srpo.history.schema import BY_NAME, RECORD_COLUMNS


def to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch tensor (CPU)
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def _convert(name: str, a: np.ndarray, n: int | None) -> np.ndarray:
    """One input column as the on-disk dtype, with range checks (no silent wrap-around)."""
    target = BY_NAME[name].dtype
    if a.ndim > 1:
        raise ValueError(f"{name}: expected a 1-d column, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    if a.dtype != target:
        if target.kind in "ui":
            if a.dtype.kind not in "ui":
                raise TypeError(f"{name}: integer column, got dtype {a.dtype}")
            if name == "prompt_id" and a.dtype == np.int64:
                a = a.view(np.uint64)  # torch has no u64: ids travel as bit-identical int64
            elif a.size:
                info = np.iinfo(target)
                lo, hi = int(a.min()), int(a.max())
                if lo < info.min or hi > info.max:
                    raise ValueError(f"{name}: values [{lo}, {hi}] do not fit {target}")
        elif a.dtype.kind not in "uif":
            raise TypeError(f"{name}: numeric column, got dtype {a.dtype}")
        a = a.astype(target)
    if a.ndim == 0:
        if n is None:
            raise ValueError(f"{name}: a scalar needs at least one array column beside it")
        a = np.full(n, a, dtype=target)
    return np.ascontiguousarray(a)


def record_columns(given: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The record columns (``RECORD_COLUMNS``, all given) as aligned on-disk arrays;
    scalars are broadcast to the length of the array columns."""
    arrays = {k: to_numpy(given[k]) for k in RECORD_COLUMNS}
    sizes = {a.shape[0] for a in arrays.values() if a.ndim == 1}
    if len(sizes) > 1:
        raise ValueError(f"columns have different lengths: {sorted(sizes)}")
    n = sizes.pop() if sizes else None
    return {name: _convert(name, arrays[name], n) for name in RECORD_COLUMNS}


def token_columns(tokens: Sequence[Any] | None, n: int) -> dict[str, np.ndarray]:
    """``token_count`` and the flattened ``token_ids`` of ``n`` rollouts' token arrays."""
    if tokens is None or len(tokens) != n:
        raise ValueError("store_tokens=True: pass tokens, one id array per rollout")
    arrs = [to_numpy(t).reshape(-1) for t in tokens]
    counts = np.fromiter((a.size for a in arrs), np.uint32, count=n)
    ids = np.concatenate(arrs) if arrs else np.zeros(0, np.int32)
    if ids.size and ids.dtype != np.int32:
        if ids.dtype.kind not in "ui":
            raise TypeError(f"tokens: integer ids expected, got {ids.dtype}")
        lo, hi = int(ids.min()), int(ids.max())
        if lo < -(2**31) or hi >= 2**31:
            raise ValueError(f"tokens: ids [{lo}, {hi}] do not fit int32")
    return {"token_count": counts, "token_ids": ids.astype(np.int32, copy=False)}
