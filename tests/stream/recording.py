"""Test helper: give a worker's stages outputs that record instead of sending."""

from __future__ import annotations

from typing import TypeVar

O = TypeVar("O")  # noqa: E741


def use_outputs(rt, outputs: O) -> O:
    """Every stage of runtime ``rt`` writes and sends through ``outputs`` from now on."""
    for holder in (rt, rt.ingest, rt.router, rt.processor, rt.online):
        holder.outputs = outputs
    return outputs
