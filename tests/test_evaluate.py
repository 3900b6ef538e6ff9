"""Held-out evaluation: greedy accuracy, pass@k and mean@k, reproducible and RNG-neutral."""

import os

import pytest
import torch
from optional_packages import import_if_installed

import_if_installed("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

from tiny_models import build_tiny_model, build_tiny_tokenizer  # noqa: E402

from bandpo.training import evaluate as evaluation  # noqa: E402

PROBLEMS = [{"prompt": [{"role": "user", "content": f"what is {a} + 1 ?"}], "answer": str(a + 1)} for a in range(5)]


class ScriptedGeneration:
    """Stands in for ``_completions``: greedy answers and, per problem, the k sampled answers."""

    def __init__(self, greedy: dict[str, str], sampled: dict[str, list[str]]) -> None:
        self.greedy, self.sampled, self.calls = greedy, sampled, []

    def __call__(self, model, tokenizer, problems, max_new_tokens, **sampling):
        self.calls.append((len(problems), sampling))
        questions = [p["prompt"][0]["content"] for p in problems]
        if not sampling.get("do_sample"):
            return [self.greedy[q] for q in questions]
        assert sampling["temperature"] == 1.0 and sampling["top_k"] == 0 and sampling["top_p"] == 1.0
        return [answer for q in questions for answer in self.sampled[q][: sampling["num_return_sequences"]]]


def test_pass_at_k_counts_problems_with_any_correct_sample_and_mean_at_k_all_correct_samples(monkeypatch):
    questions = [p["prompt"][0]["content"] for p in PROBLEMS]
    greedy = {q: p["answer"] if i < 2 else "7" for i, (q, p) in enumerate(zip(questions, PROBLEMS, strict=True))}
    correct_counts = [4, 0, 1, 0, 2]  # of 4 samples each
    sampled = {
        q: [p["answer"]] * c + ["nope"] * (4 - c) for q, p, c in zip(questions, PROBLEMS, correct_counts, strict=True)
    }
    scripted = ScriptedGeneration(greedy, sampled)
    monkeypatch.setattr(evaluation, "_completions", scripted)
    tokenizer = build_tiny_tokenizer()
    result = evaluation.evaluate(build_tiny_model(tokenizer), tokenizer, PROBLEMS, 4, samples=4, batch_size=8)
    assert result.accuracy == pytest.approx(2 / 5) and result.count == 5 and result.samples == 4
    assert result.pass_at_k == pytest.approx(3 / 5)
    assert result.mean_at_k == pytest.approx(7 / 20)
    # greedy: batches of 8 sequences; sampled: 8 // 4 = 2 problems (8 sequences) per call
    assert [n for n, s in scripted.calls if s.get("do_sample")] == [2, 2, 1]


def test_greedy_only_by_default(monkeypatch):
    scripted = ScriptedGeneration({p["prompt"][0]["content"]: p["answer"] for p in PROBLEMS}, {})
    monkeypatch.setattr(evaluation, "_completions", scripted)
    tokenizer = build_tiny_tokenizer()
    result = evaluation.evaluate(build_tiny_model(tokenizer), tokenizer, PROBLEMS, 4)
    assert result.accuracy == 1.0 and result.pass_at_k is None and result.mean_at_k is None
    assert all(not s.get("do_sample") for _, s in scripted.calls)


def test_sampling_is_reproducible_and_leaves_the_callers_rng_alone(monkeypatch):
    """The sampled completions (recorded from the real generate calls) repeat under one seed and differ under
    another: two calls from one caller RNG state would agree with each other even if ``seed`` were ignored."""
    sampled = []
    generate = evaluation._completions

    def recording(*args, **sampling):
        completions = generate(*args, **sampling)
        if sampling.get("do_sample"):
            sampled.append(completions)
        return completions

    monkeypatch.setattr(evaluation, "_completions", recording)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = evaluation.evaluate(model, tokenizer, PROBLEMS, 6, samples=4, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    first_samples = sampled.copy()
    sampled.clear()
    second = evaluation.evaluate(model, tokenizer, PROBLEMS, 6, samples=4, seed=7)
    assert first == second and sampled == first_samples
    sampled.clear()
    evaluation.evaluate(model, tokenizer, PROBLEMS, 6, samples=4, seed=8)
    assert sampled != first_samples  # the seed, not the caller's RNG state, decides the samples
    assert 0 <= first.mean_at_k <= first.pass_at_k <= 1
    assert model.training  # restored


def test_negative_samples_are_refused():
    tokenizer = build_tiny_tokenizer()
    with pytest.raises(ValueError, match="samples must be >= 0"):
        evaluation.evaluate(build_tiny_model(tokenizer), tokenizer, PROBLEMS, 4, samples=-1)


class RecordingBar(evaluation.tqdm):
    """The real progress bar, recording how it was set up and advanced."""

    made: list["RecordingBar"] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.updates: list[int] = []
        RecordingBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)
        return super().update(n)


def test_progress_bar_advances_by_each_generate_calls_sequences_up_to_its_total(monkeypatch, capsys):
    RecordingBar.made = []
    monkeypatch.setattr(evaluation, "tqdm", RecordingBar)
    scripted = ScriptedGeneration(
        {p["prompt"][0]["content"]: p["answer"] for p in PROBLEMS},
        {p["prompt"][0]["content"]: [p["answer"]] * 4 for p in PROBLEMS},
    )
    monkeypatch.setattr(evaluation, "_completions", scripted)
    tokenizer = build_tiny_tokenizer()
    evaluation.evaluate(build_tiny_model(tokenizer), tokenizer, PROBLEMS, 4, samples=4, batch_size=8, progress="before")
    (bar,) = RecordingBar.made
    assert bar.total == 5 * (1 + 4)  # 5 greedy sequences, then 4 samples of each of the 5 problems
    assert bar.updates == [5, 8, 8, 4]  # one greedy call of 5, sampled calls of 2, 2 and 1 problems
    shown = capsys.readouterr().err
    assert "before" in shown and "25/25" in shown


def test_progress_none_shows_nothing_and_the_bar_changes_no_result(capsys):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    with_bar = evaluation.evaluate(model, tokenizer, PROBLEMS, 6, samples=3, seed=1, batch_size=4)
    assert "held-out evaluation" in capsys.readouterr().err
    silent = evaluation.evaluate(model, tokenizer, PROBLEMS, 6, samples=3, seed=1, batch_size=4, progress=None)
    assert capsys.readouterr().err == ""
    assert with_bar == silent
