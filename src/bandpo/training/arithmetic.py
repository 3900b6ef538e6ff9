"""Procedurally generated arithmetic problems with a verifiable reward.

A problem is ``{"prompt": [{"role": "user", "content": "What is 7 * 8? ..."}], "answer": "56"}``.
The reward is the paper's: +1 for a correct final answer, -1 otherwise (GRPO normalises advantages
per group, so +1/-1 and 1/0 train alike; +1/-1 keeps the reward mean readable as 2 * accuracy - 1).
Plain-number answers are checked by parsing the last number of the completion; any other answer
(a fraction, an expression, LaTeX) is checked with ``math-verify``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

OPERATIONS = ("+", "-", "*")
INSTRUCTION = "Answer with just the number."
NUMBER_PATTERN = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
PLAIN_NUMBER = re.compile(r"^\s*-?\d+(?:\.\d+)?\s*$")
CORRECT_REWARD = 1.0
WRONG_REWARD = -1.0


@dataclass(frozen=True)
class ArithmeticTask:
    """Problems ``a op b`` with ``a, b`` uniform in [min_operand, max_operand] and op from ``operations``."""

    operations: tuple[str, ...] = OPERATIONS
    min_operand: int = 2
    max_operand: int = 9

    def __post_init__(self) -> None:
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if not self.operations or unknown:
            raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}, got {self.operations!r}")
        if not 0 <= self.min_operand <= self.max_operand:
            raise ValueError(
                f"need 0 <= min_operand <= max_operand, got {self.min_operand} and {self.max_operand}"
            )

    def all_problems(self) -> list[dict]:
        """Every distinct problem of the task, in a fixed order."""
        operands = range(self.min_operand, self.max_operand + 1)
        return [self._problem(a, op, b) for op in self.operations for a in operands for b in operands]

    def split(self, eval_count: int, seed: int) -> tuple[list[dict], list[dict]]:
        """(train, held_out): the task's problems shuffled with ``seed``, ``eval_count`` of them held out."""
        problems = self.all_problems()
        if not 0 < eval_count < len(problems):
            raise ValueError(f"eval_count must be in 1..{len(problems) - 1} for this task, got {eval_count}")
        random.Random(seed).shuffle(problems)
        return problems[eval_count:], problems[:eval_count]

    @staticmethod
    def _problem(a: int, op: str, b: int) -> dict:
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        question = f"What is {a} {op} {b}? {INSTRUCTION}"
        return {"prompt": [{"role": "user", "content": question}], "answer": str(value)}


def final_number(text: str) -> Fraction | None:
    """The last number written in ``text`` (commas as thousands separators), or None."""
    matches = NUMBER_PATTERN.findall(text)
    if not matches:
        return None
    return Fraction(matches[-1].replace(",", ""))


def is_correct(completion: str, answer: str | int | float) -> bool:
    """Whether ``completion`` ends with the right answer: last number for numbers, math-verify otherwise."""
    answer = str(answer)
    if PLAIN_NUMBER.match(answer):
        return final_number(completion) == Fraction(answer.strip())
    from math_verify import parse, verify

    return bool(verify(parse(answer), parse(completion)))


def completion_text(completion: str | list[dict]) -> str:
    """The text of a TRL completion (plain string or a conversational list of messages)."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message.get("role") == "assistant")


def correctness_reward(completions: list, answer: list[str], **trl_columns) -> list[float]:
    """TRL reward function: +1 for a correct final answer, -1 otherwise.

    ``trl_columns`` receives the other dataset columns TRL passes to every reward function
    (prompts, completion_ids, trainer_state, ...); they are not used.
    """
    return [
        CORRECT_REWARD if is_correct(completion_text(completion), str(expected)) else WRONG_REWARD
        for completion, expected in zip(completions, answer, strict=True)
    ]
