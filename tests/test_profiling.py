"""Interleaved timing (s3prl_distill.profiling): per-round ratios with a spread, rotating order, fixed threads; output
deviations between two forwards; the padded profiling batch."""

from typing import Dict, List

import pytest
import torch

from s3prl_distill.profiler import profile_waves
from s3prl_distill.profiling import (InterleavedTiming, Spread, forward_time_samples, interleaved_times, rotated,
                                    state_deviations)


class RepeatedLayer(torch.nn.Module):
    """An upstream-shaped module that runs the same linear layer ``passes`` times: its work scales with ``passes``.
    Every call records the model's name and torch's thread count at that moment."""

    def __init__(self, name: str, passes: int, calls: List[str], threads_seen: List[int]):
        super().__init__()
        self.name, self.passes, self.calls, self.threads_seen = name, passes, calls, threads_seen
        self.layer = torch.nn.Linear(192, 192)

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        self.calls.append(self.name)
        self.threads_seen.append(torch.get_num_threads())
        hidden = torch.stack(wavs).reshape(len(wavs), -1, 192)
        for _ in range(self.passes):
            hidden = torch.tanh(self.layer(hidden))
        return {"hidden_states": [hidden]}


def make_models(calls: List[str], threads_seen: List[int]) -> Dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"once": RepeatedLayer("once", 4, calls, threads_seen),
            "twice": RepeatedLayer("twice", 8, calls, threads_seen),
            "also once": RepeatedLayer("also once", 4, calls, threads_seen)}


WAVS = [torch.randn(192 * 400) for _ in range(4)]


def test_double_work_costs_about_double_with_an_ordered_spread():
    calls, threads_seen = [], []
    timing = interleaved_times(make_models(calls, threads_seen), WAVS, threads=1, min_rounds=15, budget_s=0.0)
    assert isinstance(timing, InterleavedTiming)
    assert timing.reference == "once" and timing.rounds == 15 and timing.threads == 1
    assert all(len(values) == 15 and min(values) > 0 for values in timing.times.values())
    spreads = timing.ratio_spreads()
    assert spreads["once"] == Spread(1.0, 1.0, 1.0)  # the reference against itself, round by round
    # Twice the layer passes: a wide band, so a busy machine does not fail it, that still rejects "no difference".
    assert 1.3 < spreads["twice"].median < 3.5, spreads
    assert 0.6 < spreads["also once"].median < 1.6, spreads
    for spread in list(spreads.values()) + list(timing.time_spreads().values()):
        assert spread.low <= spread.median <= spread.high
    ratios = timing.ratios()["twice"]
    assert min(ratios) <= spreads["twice"].low and spreads["twice"].high <= max(ratios)
    cell = spreads["twice"].format()
    assert cell.startswith(f"{spreads['twice'].median:.2f} (") and "–" in cell and cell.endswith(")")


def test_order_rotates_and_every_round_times_every_model_once():
    calls, threads_seen = [], []
    models = make_models(calls, threads_seen)
    timing = interleaved_times(models, WAVS, min_rounds=6, budget_s=0.0, warmup=2)
    names = list(models)
    assert calls[:6] == ["once", "once", "twice", "twice", "also once", "also once"]  # warm-up, model by model
    timed = calls[6:]
    rounds = [timed[i:i + 3] for i in range(0, len(timed), 3)]
    assert rounds == timing.order and len(rounds) == 6
    assert all(sorted(r) == sorted(names) for r in rounds)
    assert [r[0] for r in rounds] == ["once", "twice", "also once"] * 2  # each model starts a round in turn
    assert rotated(names, 4) == ["twice", "also once", "once"]


def test_rounds_follow_the_budget_within_the_bounds():
    calls, threads_seen = [], []
    models = make_models(calls, threads_seen)
    assert interleaved_times(models, WAVS, min_rounds=3, budget_s=1e9, max_rounds=5).rounds == 5
    assert interleaved_times(models, WAVS, min_rounds=4, budget_s=0.0).rounds == 4
    with pytest.raises(ValueError):
        interleaved_times(models, WAVS, min_rounds=5, max_rounds=4)
    with pytest.raises(KeyError, match="absent"):
        interleaved_times(models, WAVS, reference="absent", min_rounds=1)


def test_thread_count_is_fixed_during_and_restored_after_even_on_failure():
    calls, threads_seen = [], []
    models = make_models(calls, threads_seen)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timing = interleaved_times(models, WAVS, threads=1, min_rounds=2, budget_s=0.0)
        assert set(threads_seen) == {1} and timing.threads == 1
        assert torch.get_num_threads() == 2
        assert "1 torch thread," in timing.method() and "2 rounds" in timing.method()

        class Failing(torch.nn.Module):
            def forward(self, wavs):
                raise RuntimeError("broken upstream")

        with pytest.raises(RuntimeError, match="broken upstream"):
            interleaved_times({**models, "failing": Failing()}, WAVS, threads=1, min_rounds=1, budget_s=0.0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


def test_record_states_conditions_and_keeps_raw_times():
    calls, threads_seen = [], []
    timing = interleaved_times(make_models(calls, threads_seen), WAVS, reference="twice", min_rounds=3, budget_s=0.0)
    record = timing.to_json()
    assert record["reference"] == "twice" and record["rounds"] == 3 and record["threads"] == 1
    assert record["times_s"] == timing.times and record["order"] == timing.order
    assert record["ratio_to_reference"]["twice"] == {"median": 1.0, "low": 1.0, "high": 1.0}
    assert record["ratio_to_reference"]["once"]["median"] < 1.0  # half the work of the reference
    assert "logical CPUs" in timing.conditions()
    if record["load_average_before"] is not None:
        assert "load average before" in timing.conditions()


def test_forward_time_samples_also_rotates():
    calls, threads_seen = [], []
    forward_time_samples(make_models(calls, threads_seen), WAVS, repeats=3, warmup=0)
    assert calls == ["once", "twice", "also once", "twice", "also once", "once", "also once", "once", "twice"]


def test_spread_of_few_values():
    assert Spread.of([2.0]) == Spread(2.0, 2.0, 2.0)
    spread = Spread.of([1.0, 2.0, 3.0, 4.0, 100.0])
    assert spread.median == 3.0 and spread.low == 2.0 and spread.high == 4.0  # the outlier moves neither quartile
    with pytest.raises(ValueError):
        Spread.of([])


def test_state_deviations_per_state_in_units_of_the_reference_rms():
    reference = [torch.full((2, 3), 2.0), torch.tensor([[3.0, -4.0]])]  # rms 2 and sqrt(12.5)
    states = [reference[0].clone(), torch.tensor([[3.0, -4.0]])]
    states[0][1, 2] += 0.5  # one element off by 0.5; the second state is equal
    rows = state_deviations(reference, [state.bfloat16() for state in states])  # compared in float32
    assert rows[0] == pytest.approx({"max_abs": 0.5, "rms_reference": 2.0, "relative": 0.25,
                                     "mean_abs_relative": 0.5 / 6 / 2.0})
    assert rows[1]["max_abs"] == 0.0 and rows[1]["relative"] == 0.0 and rows[1]["rms_reference"] == pytest.approx(
        12.5 ** 0.5)


@pytest.mark.parametrize("reference, states, message", [
    ([torch.ones(2)], [torch.ones(2), torch.ones(2)], "2 states against 1 reference"),
    ([torch.ones(2)], [torch.ones(3)], r"state 0: shape \(3,\) against \(2,\)"),
    ([torch.zeros(2)], [torch.ones(2)], "reference state 0 is all zeros"),
])
def test_state_deviations_refuses_what_it_cannot_compare(reference, states, message):
    with pytest.raises(ValueError, match=message):
        state_deviations(reference, states)


def test_uneven_profile_waves_are_a_padded_batch_of_the_same_noise():
    even = profile_waves(2.0, 10, torch.device("cpu"))
    uneven = profile_waves(2.0, 10, torch.device("cpu"), uneven=True)
    # 1 - 0.12 i of 32 000 samples, never below a quarter (i = 7, 8, 9)
    assert [len(wave) for wave in uneven] == [32000, 28160, 24320, 20480, 16640, 12800, 8960, 8000, 8000, 8000]
    assert all(torch.equal(cut, whole[: len(cut)]) for cut, whole in zip(uneven, even))
    assert len({len(wave) for wave in even}) == 1
