"""The layer-wise engine: its dense layer-by-layer replay must reproduce the model's own hidden
states (the proof that masks, positions and per-layer-type arguments are passed correctly), and
its hooks must accumulate exactly XᵀX and ‖X_j‖ of each linear's inputs."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from harness.accumulators import GramAccumulator, InputNormAccumulator, InputStatistics
from harness.engine import LayerwiseEngine
from harness.errors import HarnessError
from harness.methods.wanda import WandaPruner
from harness.pruner import PruneContext
from harness.sparsity import Sparsity
from harness.targets import decoder_layers, find_linears
from tests.conftest import tiny_gemma3, tiny_llama


@torch.no_grad()
def model_layer_states(model: torch.nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    """Inputs of every decoder layer and the output of the last, from one plain model forward."""
    layers = decoder_layers(model)
    states: list[torch.Tensor] = []

    def pre_hook(module, args, kwargs):
        states.append(args[0] if args else kwargs["hidden_states"])

    def post_hook(module, args, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_pre_hook(pre_hook, with_kwargs=True) for layer in layers]
    handles.append(layers[-1].register_forward_hook(post_hook))
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return [s.float() for s in states]


@contextmanager
def recorded_inputs(linears: dict[str, torch.nn.Linear]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """The inputs each linear sees inside the block, as [tokens, in_features] chunks."""
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in linears}

    def hook(name: str):
        return lambda module, args, output: inputs[name].append(args[0].reshape(-1, args[0].shape[-1]))

    handles = [linear.register_forward_hook(hook(name)) for name, linear in linears.items()]
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()


def engine_layer_states(
    model: torch.nn.Module, ids: torch.Tensor, batch_size: int, offload: bool = True
) -> list[torch.Tensor]:
    engine = LayerwiseEngine(model, ids, batch_size=batch_size, offload=offload)
    states: list[torch.Tensor] = []
    for _index, _layer in engine.steps():
        states.append(engine.hidden.clone())
    states.append(engine.hidden.clone())
    return states


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [2, 5])
def test_dense_replay_reproduces_model_hidden_states(build, batch_size):
    model = build()
    ids = torch.randint(0, 256, (5, 32), generator=torch.Generator().manual_seed(1))
    expected = model_layer_states(model, ids)
    got = engine_layer_states(model, ids, batch_size)
    assert len(got) == len(expected) == len(decoder_layers(model)) + 1
    for index, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"layer {index} input differs")


def test_gemma3_layers_get_their_own_attention_arguments():
    """Sliding-window layers get a banded mask, full-attention layers none (causal sdpa), and
    the two rotary tables differ: replaying a full layer with layer 0's arguments would be wrong."""
    model = tiny_gemma3()
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(2))
    engine = LayerwiseEngine(model, ids, batch_size=2)
    engine.capture()
    (_, sliding), (_, full) = engine.calls[0][2], engine.calls[1][2]
    assert sliding["attention_mask"] is not None and full["attention_mask"] is None
    assert not torch.equal(sliding["position_embeddings"][0], full["position_embeddings"][0])
    layer = decoder_layers(model)[1]
    with torch.no_grad():
        right = layer(engine.hidden, **full)
        wrong = layer(engine.hidden, **sliding)
    assert not torch.allclose(right, wrong, atol=1e-3)


def test_activations_on_model_device_match_offloaded():
    model = tiny_llama()
    ids = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(3))
    offloaded = engine_layer_states(model, ids, 2, offload=True)
    for a, b in zip(offloaded, engine_layer_states(model, ids, 2, offload=False)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_statistics_match_direct_computation_and_share_identical_inputs():
    model = tiny_llama()
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(4))
    engine = LayerwiseEngine(model, ids, batch_size=3)
    engine.capture()
    layer = decoder_layers(model)[0]
    linears = find_linears(layer)
    grams = InputStatistics(linears, lambda linear: GramAccumulator(linear.in_features, linear.weight.device))
    norms = InputStatistics(linears, lambda linear: InputNormAccumulator(linear.in_features, linear.weight.device))
    with recorded_inputs(linears) as inputs, grams.hooked(), norms.hooked():
        engine.forward(0)
    for name in linears:
        x = torch.cat(inputs[name]).double()
        torch.testing.assert_close(grams.stats[name].gram.double(), x.T @ x, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(norms.stats[name].norms().double(), x.norm(dim=0), rtol=1e-5, atol=1e-5)
        assert grams.stats[name].tokens == 4 * 16
    attn, mlp = "self_attn.", "mlp."
    assert grams.stats[attn + "q_proj"] is grams.stats[attn + "k_proj"] is grams.stats[attn + "v_proj"]
    assert grams.stats[mlp + "gate_proj"] is grams.stats[mlp + "up_proj"]
    assert grams.stats[attn + "o_proj"] is not grams.stats[attn + "q_proj"]


def test_target_pattern_limits_pruning_and_stats_are_reported():
    model = tiny_llama()
    before = copy.deepcopy(model)
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(5))
    ctx = PruneContext(calibration=ids, target_pattern=r"layers\.0\.mlp", progress=False)
    result = WandaPruner().run(model, Sparsity(0.5), ctx)
    assert result.realized_sparsity == 0.5
    for (name, p), q in zip(model.named_parameters(), before.parameters()):
        assert torch.equal(p, q) == ("layers.0.mlp" not in name), name
    assert {"capture_seconds", "forward_seconds", "accumulate_seconds", "prune_math_seconds"} <= set(result.stats)


def test_rejects_text_calibration():
    with pytest.raises(HarnessError, match="token ids"):
        LayerwiseEngine(tiny_llama(), torch.randn(2, 8))


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m", "gemma3-270m"])
def test_dense_replay_on_bundled_models(alias, data_dir):
    """640 tokens: longer than Gemma-3-270M's 512-token sliding window, so both masks differ."""
    from harness.data import c4_windows
    from harness.models import load_model

    model, tokenizer = load_model(alias)
    ids = c4_windows(tokenizer, 3, 640, seed=0, data_dir=data_dir, bos_per_window=tokenizer.bos_token_id is not None)
    expected = model_layer_states(model, ids)
    got = engine_layer_states(model, ids, batch_size=2)
    for index, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()), msg=f"{alias} layer {index}")
