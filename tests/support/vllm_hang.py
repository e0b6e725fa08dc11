"""``python -m tests.support.vllm_hang ARGS...``: ``srpo ARGS...`` with vLLM's weight reload
made to hang, as a wedged worker would: ``LLM.collective_rpc("reload_weights", ...)``
blocks forever. Everything else (the engine, the run) is real."""

from __future__ import annotations

import sys
import threading
from typing import Any


def main() -> int:
    from vllm import LLM

    real = LLM.collective_rpc

    def collective_rpc(self: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        if method == "reload_weights":
            threading.Event().wait()  # never returns
        return real(self, method, *args, **kwargs)

    LLM.collective_rpc = collective_rpc  # type: ignore[method-assign]
    from srpo.cli import main as srpo_main

    return srpo_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
