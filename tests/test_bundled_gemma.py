"""The bundled Gemma-3-270M: its GGUF vocabulary must merge like SentencePiece BPE (whole words),
or every Gemma number is garbage (perplexity near 2000 instead of about 25)."""

from __future__ import annotations

import pytest

from harness.evaluation.perplexity import wikitext2_windows, window_perplexity
from harness.models import load_model


@pytest.mark.slow
def test_gemma3_tokenizer_merges_whole_words_and_perplexity_is_sane(data_dir):
    model, tokenizer = load_model("gemma3-270m")
    assert tokenizer.tokenize("The capital of France is") == ["The", "▁capital", "▁of", "▁France", "▁is"]
    assert tokenizer.decode(tokenizer("The capital of France is").input_ids) == "The capital of France is"
    windows = wikitext2_windows(tokenizer, 512, 4096, bos_per_window=True, data_dir=data_dir)
    assert 10 < window_perplexity(model, windows, progress=False) < 60  # measured 24.8
