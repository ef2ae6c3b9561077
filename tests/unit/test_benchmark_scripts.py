"""The developer benchmarks that compare code run and check what they promise (no timings asserted)."""

from __future__ import annotations

import pytest

from benchmarks import scoring_calls


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


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """scoring_calls sets one torch thread, as a worker does; put the test process's back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
