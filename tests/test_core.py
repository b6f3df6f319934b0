"""Unit tests of the core pieces on tiny random models: sparsity specs, masks, configs,
the registry with a real entry-point plugin, magnitude pruning."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

import pytest
import torch

from harness.config import PrunerConfig, build_config
from harness.data import as_windows, c4_windows
from harness.errors import HarnessError
from harness.masks import lowest_mask_matrix, lowest_mask_rows, nm_mask, prune_count
from harness.methods.magnitude import MagnitudePruner
from harness.pruner import PruneContext, Pruner
from harness.registry import PRUNERS, Registry, get_pruner
from harness.sparsity import Sparsity
from harness.targets import count_zeros, target_linears
from tests.helpers import InertPruner


@pytest.mark.parametrize("text,ratio,nm", [("0.5", 0.5, (0, 0)), ("0.6", 0.6, (0, 0)), ("2:4", 0.5, (2, 4)), ("4:8", 0.5, (4, 8)), ("0", 0.0, (0, 0))])
def test_sparsity_parse(text, ratio, nm):
    spec = Sparsity.parse(text)
    assert spec.ratio == pytest.approx(ratio)
    assert (spec.n, spec.m) == nm


@pytest.mark.parametrize("bad", ["1.0", "-0.1", "1.5", "abc", "4:2", "0:4"])
def test_sparsity_rejects_bad_values(bad):
    with pytest.raises(HarnessError):
        Sparsity.parse(bad)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.6, 0.77])
def test_row_and_matrix_masks_hit_exact_counts(ratio):
    scores = torch.rand(37, 53, generator=torch.Generator().manual_seed(0))
    for keep in (lowest_mask_rows(scores, ratio), lowest_mask_matrix(scores, ratio)):
        assert int((~keep).sum()) == prune_count(scores.numel(), ratio)


def test_row_mask_drops_the_lowest_in_each_row():
    scores = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.5, 0.1, 0.9, 0.7]])
    keep = lowest_mask_rows(scores, 0.5)
    assert keep.tolist() == [[True, False, True, False], [False, False, True, True]]


def test_nm_mask_keeps_n_of_every_m():
    scores = torch.rand(8, 16, generator=torch.Generator().manual_seed(1))
    keep = nm_mask(scores, 2, 4)
    assert (keep.view(8, 4, 4).sum(-1) == 2).all()
    top = scores.view(8, 4, 4).topk(2, dim=-1).values.min(-1).values
    assert (scores.view(8, 4, 4)[keep.view(8, 4, 4)].view(8, 4, 2).min(-1).values >= top).all()


@dataclass
class _Cfg(PrunerConfig):
    steps: int = 10
    lr: float = 1e-3
    mode: str = "a"
    flag: bool = False
    maybe: int | None = None

    def validate(self) -> None:
        if self.steps <= 0:
            raise HarnessError("demo.steps must be positive")


def test_build_config_coerces_and_validates():
    cfg = build_config(_Cfg, {"steps": "5", "lr": "0.01", "flag": "true", "maybe": "none"}, "demo")
    assert (cfg.steps, cfg.lr, cfg.flag, cfg.maybe) == (5, 0.01, True, None)
    with pytest.raises(HarnessError, match="no option 'nope'"):
        build_config(_Cfg, {"nope": "1"}, "demo")
    with pytest.raises(HarnessError, match="takes a int"):
        build_config(_Cfg, {"steps": "x"}, "demo")
    with pytest.raises(HarnessError, match="positive"):
        build_config(_Cfg, {"steps": "0"}, "demo")


def test_registry_unknown_name_lists_available():
    with pytest.raises(HarnessError) as info:
        get_pruner("magnitud")
    assert "did you mean 'magnitude'" in str(info.value)
    assert "magnitude" in str(info.value)


def test_builtins_come_from_entry_points():
    assert {"magnitude", "wanda", "sparsegpt", "admm", "leap"} <= set(PRUNERS.names())
    assert get_pruner("magnitude") is MagnitudePruner


def test_plugin_discovered_through_entry_point(tmp_path, monkeypatch):
    """A third-party package with one entry point becomes a method, with no change to our code."""
    (tmp_path / "fancy_plugin.py").write_text(
        textwrap.dedent(
            '''
            from harness import Pruner

            class HalfPruner(Pruner):
                """Zero the first half of every targeted row."""
                needs_calibration = False

                def prune(self, model, sparsity, ctx):
                    for linear in ctx.targets(model).values():
                        linear.weight.data[:, : linear.weight.shape[1] // 2] = 0
                    return {"plugin": True}
            '''
        )
    )
    dist = tmp_path / "fancy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fancy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[harness.pruners]\nfancy = fancy_plugin:HalfPruner\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("harness.pruners")
    assert "fancy" in registry.names()
    cls = registry.get("fancy")
    assert cls.__name__ == "HalfPruner" and cls.name == "fancy"
    from tests.conftest import tiny_llama

    model = tiny_llama()
    result = cls().run(model, Sparsity(0.5), PruneContext())
    assert result.realized_sparsity == pytest.approx(0.5)
    assert result.stats == {"plugin": True}
    sys.modules.pop("fancy_plugin", None)


def test_decorator_registration_and_collision():
    registry = Registry("harness.test-none")

    @registry.register("demo")
    class Demo(Pruner):
        needs_calibration = False

        def prune(self, model, sparsity, ctx):
            return {}

    assert registry.get("demo") is Demo
    with pytest.raises(ValueError):
        registry.register("demo")(type("Other", (Demo,), {}))


def test_targets_are_decoder_linears_only(tiny_model):
    names = list(target_linears(tiny_model))
    assert len(names) == 2 * 7
    assert all(name.startswith("model.layers.") for name in names)
    assert not any("embed" in n or "lm_head" in n for n in names)
    assert list(target_linears(tiny_model, r"mlp\.")) == [n for n in names if ".mlp." in n]


@pytest.mark.parametrize("scope", ["matrix", "row", "global"])
@pytest.mark.parametrize("ratio", [0.5, 0.6])
def test_magnitude_exact_sparsity(tiny_model, scope, ratio):
    pruner = MagnitudePruner(scope=scope)
    result = pruner.run(tiny_model, Sparsity(ratio), PruneContext())
    linears = target_linears(tiny_model)
    total = sum(linear.weight.numel() for linear in linears.values())
    zeros = sum(int((linear.weight == 0).sum()) for linear in linears.values())
    if scope == "global":
        assert zeros == prune_count(total, ratio)
    else:
        for linear in linears.values():
            assert int((linear.weight == 0).sum()) == prune_count(linear.weight.numel(), ratio)
    assert result.realized_sparsity == pytest.approx(zeros / total)
    assert not any("embed" in k for k in result.layer_sparsity)


def test_magnitude_prunes_smallest_weights(tiny_model):
    linear = target_linears(tiny_model)["model.layers.0.mlp.up_proj"]
    dense = linear.weight.detach().clone()
    MagnitudePruner().run(tiny_model, Sparsity(0.5), PruneContext())
    kept = dense.abs()[linear.weight != 0]
    dropped = dense.abs()[linear.weight == 0]
    assert kept.min() >= dropped.max()


def test_magnitude_nm(tiny_model):
    MagnitudePruner().run(tiny_model, Sparsity.parse("2:4"), PruneContext())
    for linear in target_linears(tiny_model).values():
        groups = (linear.weight != 0).view(linear.weight.shape[0], -1, 4).sum(-1)
        assert (groups <= 2).all()


def test_masks_are_deterministic():
    from tests.conftest import tiny_llama

    masks = []
    for _ in range(2):
        model = tiny_llama(seed=3)
        MagnitudePruner().run(model, Sparsity(0.5), PruneContext())
        masks.append([lin.weight != 0 for lin in target_linears(model).values()])
    assert all(torch.equal(a, b) for a, b in zip(*masks))


def test_method_without_nm_support_says_so(tiny_model):
    with pytest.raises(HarnessError, match="does not support N:M"):
        InertPruner().run(tiny_model, Sparsity.parse("2:4"), PruneContext())


def test_count_zeros(tiny_model):
    linears = target_linears(tiny_model)
    first = next(iter(linears.values()))
    first.weight.data[0] = 0
    per_layer, overall = count_zeros(linears)
    assert per_layer[next(iter(linears))] == pytest.approx(1 / first.weight.shape[0])
    assert 0 < overall < 0.1


def test_windows_with_bos_keep_the_stream_order():
    stream = list(range(10, 30))
    plain = as_windows(stream, 5)
    assert plain.tolist() == [stream[0:5], stream[5:10], stream[10:15], stream[15:20]]
    with_bos = as_windows(stream, 5, bos_id=1)
    assert with_bos[:, 0].tolist() == [1] * 5
    assert with_bos[:, 1:].flatten().tolist() == stream  # 4 stream tokens a window, none skipped


def test_c4_calibration_windows_start_with_bos_when_asked(tmp_path, data_dir):
    from transformers import AutoTokenizer

    from tests.helpers import tiny_model_folder

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_folder(tmp_path))
    tokenizer.bos_token = "<eos>"  # the tiny tokenizer's only special token stands in for <bos>
    plain = c4_windows(tokenizer, 4, 16, seed=0, data_dir=data_dir)
    with_bos = c4_windows(tokenizer, 4, 16, seed=0, data_dir=data_dir, bos_per_window=True)
    assert plain.shape == with_bos.shape == (4, 16)
    assert (with_bos[:, 0] == tokenizer.bos_token_id).all()
    assert torch.equal(with_bos[:, 1:].flatten(), plain.flatten()[: 4 * 15])


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.77])
def test_global_lowest_masks_equal_the_concatenated_top_k(ratio):
    from harness.masks import global_lowest_masks

    g = torch.Generator().manual_seed(0)
    scores = {f"m{i}": torch.randn(37 + i, 53, generator=g) for i in range(5)}
    masks = global_lowest_masks(scores, ratio)
    flat = torch.cat([masks[name].flatten() for name in scores])
    assert torch.equal(flat, lowest_mask_matrix(torch.cat([t.flatten() for t in scores.values()]), ratio))
    assert int((~flat).sum()) == prune_count(flat.numel(), ratio)


def test_global_lowest_masks_break_ties_in_order_and_stay_exact():
    from harness.masks import global_lowest_masks

    scores = {"a": torch.tensor([[1.0, 1.0, 0.0], [1.0, 2.0, -0.0]]), "b": torch.tensor([1.0, 1.0, -3.0])}
    masks = global_lowest_masks(scores, 0.5)  # 9 scores, 4 dropped: -3, -0, 0 and the first tied 1
    assert masks["a"].tolist() == [[False, True, False], [True, True, False]]
    assert masks["b"].tolist() == [True, True, False]
    levels = {f"m{i}": torch.randint(0, 3, (64, 64), generator=torch.Generator().manual_seed(i)).float() for i in range(4)}
    for ratio in (0.2, 0.5, 0.9):  # three distinct values only: almost every count is decided by ties
        kept = sum(int(m.sum()) for m in global_lowest_masks(levels, ratio).values())
        assert 4 * 64 * 64 - kept == prune_count(4 * 64 * 64, ratio)
