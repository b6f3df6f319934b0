"""The named plugin API: `harness.__all__` resolves, and the README's two plugin examples, run as
written with imports from `harness` alone, prune a tiny model to its exact sparsity and register
through a real entry point."""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import harness
from harness import PruneContext, Sparsity, prune_count
from harness.registry import Registry  # test tooling: a registry of its own, and the zero count
from harness.targets import target_linears
from tests.conftest import tiny_llama

README = Path(__file__).resolve().parent.parent / "README.md"


def _plugin_examples() -> dict[str, str]:
    """The README's plugin code blocks, by the module their first comment names."""
    section = README.read_text().split("## Adding a pruner as a plugin", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    return {re.match(r"# (\w+)/__init__\.py", block).group(1): block for block in blocks}


def test_every_exported_name_resolves():
    for name in harness.__all__:
        assert getattr(harness, name) is not None
    with pytest.raises(AttributeError):
        harness.no_such_name  # noqa: B018


def test_readme_examples_import_only_the_plugin_api():
    examples = _plugin_examples()
    assert set(examples) == {"my_pruner", "my_layerwise"}
    for source in examples.values():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness"):
                assert node.module == "harness" and {a.name for a in node.names} <= set(harness.__all__)


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """The README's examples installed as packages with entry points, as a user would."""
    entry = ["[harness.pruners]"]
    for module, source in _plugin_examples().items():
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text(textwrap.dedent(source))
    entry += ["random = my_pruner:RandomPruner", "colnorm = my_layerwise:ColumnNormPruner"]
    dist = tmp_path / "my_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("\n".join(entry) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield Registry("harness.pruners")
    for module in ("my_pruner", "my_layerwise"):
        sys.modules.pop(module, None)


@pytest.mark.parametrize("name,sparsity", [("random", "0.5"), ("random", "2:4"), ("colnorm", "0.6")])
def test_readme_plugins_prune_exactly(plugins, name, sparsity):
    cls = plugins.get(name)
    spec = Sparsity.parse(sparsity)
    model = tiny_llama()
    calibration = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    result = cls().run(model, spec, PruneContext(calibration=calibration, progress=False))
    for linear in target_linears(model).values():
        weight = linear.weight
        if spec.is_nm:
            assert ((weight != 0).view(weight.shape[0], -1, spec.m).sum(-1) == spec.n).all()
        else:
            assert int((weight == 0).sum()) == prune_count(weight.numel(), spec.ratio)
    assert result.realized_sparsity == pytest.approx(spec.ratio, abs=1e-4)  # per-matrix rounding
