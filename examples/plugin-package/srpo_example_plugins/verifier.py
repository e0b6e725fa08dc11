"""A verifier that accepts the last number in the response when it equals the reference."""

from __future__ import annotations

import re
from collections.abc import Sequence

from srpo.api import PluginOptions, Prompt, Score, Verifier

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class LastNumberOptions(PluginOptions):
    reward_correct: float = 1.0


class LastNumberVerifier(Verifier):
    Options = LastNumberOptions

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[Score]:
        out = []
        for prompt, text in zip(prompts, responses, strict=True):
            numbers = NUMBER.findall(text)
            if not numbers:
                out.append(Score(0.0, False, error="no number in response"))
                continue
            ok = float(numbers[-1]) == float(str(prompt.reference))
            out.append(Score(self.options.reward_correct if ok else 0.0, ok))
        return out
