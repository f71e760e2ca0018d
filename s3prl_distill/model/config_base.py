"""The base every config section derives from (model, heads, pretrain, upstream options)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of all config sections: unknown keys are errors, values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_probability(value: float) -> float:
    """A dropout-like rate: ``[0, 1)``, as a field validator's body."""
    if not 0.0 <= value < 1.0:
        raise ValueError("must be in [0, 1)")
    return value
