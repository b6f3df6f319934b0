"""Shared fixtures: tiny random models built from a config (fast, no files) and the real
bundled SmolLM2 (slow tests only)."""

from __future__ import annotations

import pytest
import torch

from harness.data import default_data_dir


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_model():
    return tiny_llama()


@pytest.fixture(scope="session")
def data_dir():
    path = default_data_dir()
    if not path.exists():
        pytest.skip(f"shared data folder {path} is absent")
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (dense, float32). Tests must not modify it: copy it first."""
    from harness.models import load_model

    return load_model("smollm2-135m")
