"""Shared fixtures. Models are built once per session: a ViT-B/32 build takes seconds."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


@pytest.fixture(scope="session")
def vit_random():
    """Seeded random-init ViT-B/32 (QuickGELU, as the openai architecture), fp32, CPU."""
    from helpers.models import load_model

    return load_model("ViT-B-32", "random", device="cpu", seed=0)
