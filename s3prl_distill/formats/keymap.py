"""Two-way renaming of state-dict keys between a foreign layout and ours."""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Pattern, Tuple

from torch import Tensor


class KeyMap:
    """Prefix rules ``(theirs, ours)``; ``{n}`` stands for a layer index and must appear in both.

    Every key has to match exactly one rule: a key nothing matches is an error (it would otherwise be dropped
    silently and the strict load would fail far from the cause).
    """

    def __init__(self, rules: Iterable[Tuple[str, str]]) -> None:
        self.rules = list(rules)
        self._to_ours = [(self._compile(theirs), ours) for theirs, ours in self.rules]
        self._to_theirs = [(self._compile(ours), theirs) for theirs, ours in self.rules]

    @staticmethod
    def _compile(prefix: str) -> Pattern[str]:
        return re.compile("^" + re.escape(prefix).replace(r"\{n\}", r"(?P<n>\d+)"))

    @staticmethod
    def _rename(key: str, rules: List[Tuple[Pattern[str], str]]) -> str:
        for pattern, replacement in rules:
            match = pattern.match(key)
            if match:
                target = replacement.replace("{n}", match.group("n")) if "n" in match.groupdict() else replacement
                return target + key[match.end():]
        raise KeyError(key)

    def _apply(self, state: Mapping[str, Tensor], rules, what: str, skip_unmatched: bool = False) -> Dict[str, Tensor]:
        renamed, unknown = {}, []
        for key, value in state.items():
            try:
                renamed[self._rename(key, rules)] = value
            except KeyError:
                unknown.append(key)
        if unknown and not skip_unmatched:
            raise ValueError(f"{what}: no rule for keys {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        return renamed

    def to_ours(self, state: Mapping[str, Tensor], skip_unmatched: bool = False) -> Dict[str, Tensor]:
        """Renamed copy; ``skip_unmatched`` drops keys no rule covers instead of failing (partial imports)."""
        return self._apply(state, self._to_ours, "importing a foreign state dict", skip_unmatched)

    def to_theirs(self, state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        return self._apply(state, self._to_theirs, "exporting a state dict")
