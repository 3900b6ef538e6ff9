"""Prompt/answer datasets for ``bandpo train --dataset``: a hub id or a local jsonl/json/parquet/csv file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class DatasetSpec:
    """Where the prompts come from and which columns hold the prompt and the reference answer."""

    source: str
    split: str = "train"
    prompt_column: str = "prompt"
    answer_column: str = "answer"


def load_raw_dataset(spec: DatasetSpec):
    """The ``datasets.Dataset`` named by ``spec`` (local file by extension, else a hub id)."""
    from datasets import load_dataset

    path = Path(spec.source).expanduser()
    if path.suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise ValueError(f"--dataset: file {spec.source} not found")
        return load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    if path.exists():
        raise ValueError(
            f"--dataset: {spec.source} must be a file ending in one of {', '.join(LOCAL_FORMATS)} or a hub id"
        )
    try:
        return load_dataset(spec.source, split=spec.split)
    except Exception as error:  # datasets raises several types for a missing dataset or split
        raise ValueError(f"--dataset: cannot load {spec.source!r} (split {spec.split!r}): {error}") from error


def check_columns(column_names: list[str], spec: DatasetSpec) -> None:
    """ValueError naming the missing prompt/answer columns and the columns that exist."""
    missing = [name for name in (spec.prompt_column, spec.answer_column) if name not in column_names]
    if missing:
        raise ValueError(
            f"--dataset {spec.source}: missing column(s) {', '.join(missing)}; it has {', '.join(column_names)} "
            "(choose others with --prompt-column / --answer-column)"
        )


def to_prompt_answer(row: dict, spec: DatasetSpec) -> dict:
    """A row as ``{"prompt": [user message], "answer": str}`` (conversational prompts kept as they are)."""
    prompt = row[spec.prompt_column]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return {"prompt": prompt, "answer": str(row[spec.answer_column])}


def load_prompt_dataset(spec: DatasetSpec):
    """The dataset with exactly the columns ``prompt`` and ``answer``; columns checked first."""
    raw = load_raw_dataset(spec)
    check_columns(raw.column_names, spec)
    return raw.map(lambda row: to_prompt_answer(row, spec), remove_columns=raw.column_names)
