"""Test helpers: a tiny model folder (random weights + a small trained tokenizer) that the real
loading path accepts as a local model spec."""

from __future__ import annotations

from pathlib import Path

from harness.pruner import Pruner
from tests.conftest import tiny_llama

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pruning removes weights from a neural network while keeping its accuracy.",
    "Robert Boulter is an English film, television and theatre actor.",
]


class InertPruner(Pruner):
    """A pruner with none of the optional capabilities (no N:M, no profile) that changes
    nothing: for the refusals the base class makes before `prune` runs."""

    name = "inert"
    needs_calibration = False

    def prune(self, model, sparsity, ctx):
        return {}


def tiny_model_folder(root: Path, seed: int = 0) -> Path:
    """Save a tiny random Llama with a byte-level BPE tokenizer to `root` and return it."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=256 + 40, min_frequency=1, special_tokens=["<eos>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")
    model = tiny_llama(seed)
    model.resize_token_embeddings(len(tokenizer))
    model.config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`harness ARGS` in this process: (exit code, stdout, stderr)."""
    import sys

    from harness.cli import main

    monkeypatch.setattr(sys, "argv", ["harness", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err
