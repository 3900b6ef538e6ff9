"""The arithmetic task and its verifiable reward."""

import pytest
from optional_packages import import_if_installed

import_if_installed("math_verify")

from bandpo.training.arithmetic import ArithmeticTask, correctness_reward, final_number, is_correct  # noqa: E402


def test_split_is_disjoint_deterministic_and_correct():
    task = ArithmeticTask()
    train, held_out = task.split(64, seed=3)
    assert len(held_out) == 64 and len(train) + 64 == 3 * 8 * 8
    questions = lambda problems: {p["prompt"][0]["content"] for p in problems}  # noqa: E731
    assert not questions(train) & questions(held_out)
    assert task.split(64, seed=3) == (train, held_out)
    for problem in held_out:
        a, op, b = problem["prompt"][0]["content"].split("?")[0].split()[2:5]
        assert int(problem["answer"]) == eval(f"{a}{op}{b}")


@pytest.mark.parametrize(
    "text, value", [("7 * 8 = 56", 56), ("The answer is -3.", -3), ("1,234", 1234), ("no digits", None)]
)
def test_final_number(text, value):
    assert final_number(text) == value


def test_reward_plus_minus_one_and_math_verify():
    completions = [[{"role": "assistant", "content": "8 + 9 = 17"}], [{"role": "assistant", "content": "It is 16"}]]
    assert correctness_reward(completions, answer=["17", "17"]) == [1.0, -1.0]
    assert is_correct("so x = \\frac{1}{2}", "\\frac{1}{2}")
    assert not is_correct("so x = 1/3", "\\frac{1}{2}")


@pytest.mark.parametrize("answer", [14, 14.0, "14", " 14 "])
def test_answers_of_every_type_are_checked(answer):
    assert is_correct("The answer is 14.", answer)
    assert not is_correct("The answer is 15.", answer)


def test_bad_task_is_rejected():
    with pytest.raises(ValueError, match="operations must be"):
        ArithmeticTask(operations=("/",))
