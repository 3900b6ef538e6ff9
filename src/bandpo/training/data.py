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
        if path.stat().st_size == 0:
            raise ValueError(f"--dataset {spec.source} has no rows")
        try:
            return load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        except Exception as error:  # malformed JSON/CSV, a wrong encoding: datasets raises several types
            cause = error.__cause__ or error
            raise ValueError(f"--dataset: cannot read {spec.source}: {type(cause).__name__}: {cause}") from error
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


def is_prompt(value) -> bool:
    """A plain string, or a conversation: a list of {"role": ..., "content": ...} messages."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value)


def check_rows(dataset, spec: DatasetSpec) -> None:
    """ValueError naming the file and the first row whose prompt or answer cannot be used."""
    if len(dataset) == 0:
        raise ValueError(f"--dataset {spec.source} has no rows")
    for index, prompt in enumerate(dataset[spec.prompt_column]):
        if not is_prompt(prompt):
            raise ValueError(
                f"--dataset {spec.source}: prompt column {spec.prompt_column!r} must hold strings or lists of "
                f"{{'role', 'content'}} messages; row {index} holds {prompt!r}"
            )
    for index, answer in enumerate(dataset[spec.answer_column]):
        if answer is None:
            raise ValueError(f"--dataset {spec.source}: answer column {spec.answer_column!r} is empty in row {index}")


def to_prompt_answer(row: dict, spec: DatasetSpec) -> dict:
    """A row as ``{"prompt": [user message], "answer": str}`` (conversational prompts kept as they are)."""
    prompt = row[spec.prompt_column]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return {"prompt": prompt, "answer": str(row[spec.answer_column])}


def load_prompt_dataset(spec: DatasetSpec):
    """The dataset with exactly the columns ``prompt`` and ``answer``; columns checked first.

    The answer column is cast to strings first: ``map`` keeps a column's type, so an int64 column
    would turn ``str(answer)`` back into integers.
    """
    from datasets import Value

    raw = load_raw_dataset(spec)
    check_columns(raw.column_names, spec)
    check_rows(raw, spec)
    raw = raw.cast_column(spec.answer_column, Value("string"))
    return raw.map(lambda row: to_prompt_answer(row, spec), remove_columns=raw.column_names)
