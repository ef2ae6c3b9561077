"""The developer benchmarks that compare code run and check what they promise (no timings asserted)."""

from __future__ import annotations

import re

import pytest

from benchmarks import scoring_calls, stage_costs


def test_scoring_calls_compares_a_revision_and_idle_stretches(capsys):
    assert scoring_calls.main(["--against", "HEAD", "--batch", "3", "--calls", "2", "--rounds", "2", "--idle-ms", "0,1"]) == 0
    out = capsys.readouterr().out
    assert "HEAD, idle 1 ms" in out and "this tree, idle 0 ms" in out
    assert out.count("outputs the same bits") == 2  # one line per idle setting


def test_scoring_calls_stops_when_the_outputs_differ(monkeypatch, capsys):
    from models.sequence.model import SequenceModel

    real = SequenceModel.score_last

    def off_by_a_bit(self, *args, **kw):  # only this tree's model is a SequenceModel of this module
        p_i, *rest = real(self, *args, **kw)
        return (p_i * (1 + 2**-20), *rest)

    monkeypatch.setattr(SequenceModel, "score_last", off_by_a_bit)
    assert scoring_calls.main(["--against", "HEAD", "--batch", "3", "--calls", "2", "--rounds", "1"]) == 1
    assert "p_intent differs from HEAD's" in capsys.readouterr().err


def test_stage_costs_reports_each_step_and_the_ceiling_its_total_sets(capsys):
    assert stage_costs.main(["--events", "300", "--users", "100", "--batch", "100", "--gc", "on"]) == 0
    out = capsys.readouterr().out
    steps = dict(re.findall(r"^  (\S.*?)\s+([\d.]+) us$", out, re.M))
    assert {"process: step: apply: state, online models", "process: step: sequence model", "total"} <= steps.keys()
    total = float(steps.pop("total"))
    assert total == pytest.approx(sum(map(float, steps.values())), abs=0.1 * len(steps))
    ceiling = int(re.search(r"at most ([\d,]+) events/s", out).group(1).replace(",", ""))
    assert ceiling == pytest.approx(1e6 / total, rel=0.01)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """scoring_calls and stage_costs set one torch thread, as a worker does; put the test process's back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
