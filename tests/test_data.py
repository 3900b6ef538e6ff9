"""Prompt/answer datasets from local files: answers of any type, and every unreadable file named."""

import json
import os

import pytest
from optional_packages import import_if_installed

import_if_installed("datasets")
os.environ["HF_HUB_OFFLINE"] = "1"

from bandpo.training.data import DatasetSpec, load_prompt_dataset  # noqa: E402


def test_numeric_csv_answers_become_strings(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,answer\n" + "".join(f"What is {i} + 1 ?,{i + 1}\n" for i in range(40)))
    dataset = load_prompt_dataset(DatasetSpec(str(path)))
    assert dataset[0] == {"prompt": [{"role": "user", "content": "What is 0 + 1 ?"}], "answer": "1"}
    assert all(isinstance(answer, str) for answer in dataset["answer"])


@pytest.mark.parametrize("answer, expected", [(14, "14"), (2.5, "2.5"), ("1/2", "1/2")])
def test_jsonl_answers_of_every_type_become_strings(tmp_path, answer, expected):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": answer}) + "\n" for i in range(3)))
    assert load_prompt_dataset(DatasetSpec(str(path)))["answer"] == [expected] * 3


def test_conversational_prompts_are_kept(tmp_path):
    path = tmp_path / "d.jsonl"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "1+1?"}]
    path.write_text(json.dumps({"prompt": messages, "answer": "2"}) + "\n")
    assert load_prompt_dataset(DatasetSpec(str(path)))[0]["prompt"] == messages


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", b"", "has no rows"),
        ("broken.jsonl", b'{"prompt": "a", "answer": 1}\n{"prompt": \n', "cannot read"),
        ("latin1.csv", "prompt,answer\nWhat is caf\u00e9 ?,1\n".encode("latin-1"), "cannot read"),
        ("numbers.jsonl", b'{"prompt": 5, "answer": 1}\n', "prompt column 'prompt' must hold strings or lists of"),
        ("missing.jsonl", b'{"prompt": "a", "answer": null}\n', "answer column 'answer' is empty in row 0"),
    ],
)
def test_unusable_files_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        load_prompt_dataset(DatasetSpec(str(path)))
    assert message in str(error.value) and str(path) in str(error.value)


def test_missing_columns_list_the_columns_that_exist(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match="missing column.s. prompt; it has question, answer"):
        load_prompt_dataset(DatasetSpec(str(path)))
