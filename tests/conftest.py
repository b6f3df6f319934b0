"""Shared fixtures: tiny random models built from a config (fast, no files) and the real
bundled SmolLM2 (slow tests only)."""

from __future__ import annotations

import os

# No hub is reachable here: fail a hub lookup at once instead of after network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The tests read the project's own data, whatever data folder the shell points at.
os.environ.pop("HARNESS_DATA_DIR", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from harness.manifest import PROJECT_DATA  # noqa: E402


# Shared by the tiny configs: small enough for milliseconds per forward, with grouped-query attention.
TINY_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=256,
)


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=layers, **TINY_SIZES)).eval()


def tiny_gemma3(seed: int = 0, layers: int = 3):
    """Gemma-3 text model alternating sliding-window (window 8) and full attention layers."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        num_hidden_layers=layers,
        head_dim=16,
        sliding_window=8,
        **TINY_SIZES,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
    )
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture
def tiny_model():
    return tiny_llama()


@pytest.fixture
def tiny_gemma():
    return tiny_gemma3()


@pytest.fixture(scope="session")
def data_dir():
    """The project's own data (data/, verified by its manifest): the tests never skip for want of it."""
    return PROJECT_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real default model (dense, float32). Tests must not modify it: copy it first."""
    from harness.models import load_model

    return load_model("smollm2-135m")
