"""A drop-in for OpenRLHF 0.11's ``openrlhf.models.PolicyLoss`` with BandPO's bounds.

`BandPOPolicyLoss` takes PolicyLoss's constructor arguments (``clip_eps_low``/``clip_eps_high``
are the margins of the ``clip``/``clip-higher``/``band-relax``/``dcpo`` rules), plus keyword-only
``bandpo_clip_method``, ``bandpo_divergence``, ``bandpo_delta`` and ``bandpo_upper_max``; its ``forward``
has PolicyLoss's signature and returns the same tuple ``(loss, clip_ratio, ppo_kl, vllm_kl,
is_filter_ratio)``.

Supported: PPO-style token ratios (``policy_loss_type="ppo"``) with any bound rule, and OpenRLHF's
train/rollout importance-sampling correction (``is_correction_level`` token | seq, ``is_correction_mode``
mask | clip, ``is_correction_gating`` ratio | binary_kl | tv, ``is_correction_threshold``) applied as
OpenRLHF applies it (`rollout_correction`). Refused: ``policy_loss_type="gspo"`` (a sequence-level
ratio, while every BandPO bound is per token, from that token's old probability), and the correction
settings OpenRLHF itself refuses.

OpenRLHF builds its PolicyLoss inside the Ray actor workers (``openrlhf.trainer.ray.ppo_actor``), so the
swap must run in each worker: pass `use_bandpo_policy_loss` as Ray's ``worker_process_setup_hook``
in the job's runtime env, with BandPO's parameters as ``BANDPO_*`` environment variables (``BANDPO_X``
sets the keyword ``bandpo_x``)::

    ray job submit --runtime-env-json='{
        "worker_process_setup_hook": "bandpo.integrations.openrlhf.use_bandpo_policy_loss",
        "env_vars": {"BANDPO_CLIP_METHOD": "band", "BANDPO_DELTA": "0.05"}}' \\
        -- python3 -m openrlhf.cli.train_ppo_ray ...
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import functools
import importlib
import importlib.util
import inspect
import io
import json
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypedDict, cast

import torch
from torch import Tensor, nn

from bandpo.aggregation import aggregate
from bandpo.checks import check_number
from bandpo.loss import policy_terms
from bandpo.rules import BoundRule, check_clip_method, check_eps_low, make_rule

OPENRLHF_ACTOR_MODULE = "openrlhf.trainer.ray.ppo_actor"
"""The module whose ``PolicyLoss`` name OpenRLHF's actor trainer instantiates."""

ENVIRONMENT_PARAMETERS = {
    "BANDPO_CLIP_METHOD": ("bandpo_clip_method", str),
    "BANDPO_DIVERGENCE": ("bandpo_divergence", str),
    "BANDPO_DELTA": ("bandpo_delta", float),
    "BANDPO_UPPER_MAX": ("bandpo_upper_max", float),
}
"""Environment variables read by `use_bandpo_policy_loss` and the keyword each one sets."""
OTHER_BANDPO_VARIABLES = ("BANDPO_ALLOW_UNTESTED_TRL",)
"""``BANDPO_*`` variables of other parts of bandpo (here: `bandpo.integrations.trl`), passed over."""

POLICY_LOSS_TYPES = ("ppo",)
IS_CORRECTION_LEVELS = ("off", "token", "seq")
IS_CORRECTION_MODES = ("mask", "clip")
IS_CORRECTION_GATINGS = ("ratio", "binary_kl", "tv")
CORRECTION_PROBABILITY_CLAMP = 1e-6
"""OpenRLHF clamps both probabilities to [1e-6, 1 - 1e-6] before the binary_kl / tv gates."""


def global_aggregate(
    loss_matrix: Tensor,
    mask: Tensor,
    token_level_loss: bool,
    dp_size: int,
    batch_num_tokens: float | None,
    global_batch_size: float | None,
) -> Tensor:
    """OpenRLHF's reduction: token-mean or seq-mean-token-mean, over the global batch when its size is given.

    With ``batch_num_tokens`` (token mode) or ``global_batch_size`` (sequence mode) the local sum is
    divided by that global count and multiplied by ``dp_size``, so the data-parallel average of the
    per-rank losses is the full-batch loss; without it the loss is the local mean (`bandpo.aggregation`).
    """
    if token_level_loss:
        if batch_num_tokens is None:
            return aggregate(loss_matrix, mask, "token-mean")
        return (loss_matrix * mask).sum() / batch_num_tokens * dp_size
    if global_batch_size is None:
        return aggregate(loss_matrix, mask, "seq-mean-token-mean")
    tokens_per_sequence = mask.sum(-1)
    sequence_means = (loss_matrix * mask).sum(-1) / tokens_per_sequence.clamp_min(1.0)
    return sequence_means.sum() / global_batch_size * dp_size


def check_rollout_correction(level: str, mode: str, gating: str, threshold: Sequence[float]) -> tuple[float, float]:
    """Validate OpenRLHF's ``is_correction_*`` settings as OpenRLHF 0.11 does; returns (low, high).

    Besides OpenRLHF's own checks (the three choices; ``clip`` only at token level with ratio gating; a
    divergence gate takes an upper bound only, low = 0), the threshold must be two numbers with
    0 <= low <= high (high may be inf).
    """
    for name, value, accepted in (
        ("is_correction_level", level, IS_CORRECTION_LEVELS),
        ("is_correction_mode", mode, IS_CORRECTION_MODES),
        ("is_correction_gating", gating, IS_CORRECTION_GATINGS),
    ):
        if value not in accepted:
            raise ValueError(f"{name} must be one of {', '.join(accepted)}, got {value!r}")
    if mode == "clip" and (level == "seq" or gating != "ratio"):
        raise ValueError(
            f"is_correction_mode='clip' clamps the per-token ratio: it needs is_correction_level='token' and "
            f"is_correction_gating='ratio', got level {level!r} and gating {gating!r} (use is_correction_mode='mask')"
        )
    if isinstance(threshold, (str, bytes)) or not isinstance(threshold, Sequence) or len(threshold) != 2:
        raise ValueError(f"is_correction_threshold must be a pair (low, high), got {threshold!r}")
    low = check_number("is_correction_threshold low", threshold[0], low=0.0)
    high = check_number("is_correction_threshold high", threshold[1], low=low, allow_infinity=True)
    if gating != "ratio" and level != "off" and low > 0:
        raise ValueError(
            f"is_correction_gating={gating!r} bounds a divergence from above only: is_correction_threshold must "
            f"be (0, delta), got {tuple(threshold)!r}"
        )
    return low, high


class RolloutCorrection(NamedTuple):
    """OpenRLHF's train/rollout correction for one batch: the per-token factor on the loss and its logs."""

    weights: Tensor
    """(B, T) factor multiplying each token's loss (no gradient); 1 on padding."""
    filtered: Tensor
    """Bool, per gated unit: (B, T) at token level, (B, 1) at sequence level; True where out of band."""
    is_filter_ratio: Tensor
    """Share of gated units out of band (valid tokens, or sequences with a valid token)."""
    vllm_kl: Tensor
    """Mean over valid tokens of log pi_rollout - log pi_old."""


def rollout_correction(
    old_log_probs: Tensor,
    rollout_log_probs: Tensor | None,
    mask: Tensor,
    *,
    level: str,
    mode: str = "mask",
    gating: str = "ratio",
    threshold: Sequence[float] = (0.5, 5.0),
) -> RolloutCorrection:
    """OpenRLHF 0.11's train/rollout importance-sampling correction, written from its documented semantics.

    With w = pi_old / pi_rollout per token (old = the training engine's log-probs, rollout = vLLM's), a
    gate reads one statistic per unit (``level`` token: each token; seq: each sequence) and
    ``threshold`` = (low, high):

        gating ratio      token: w;  seq: exp(mean_t log w)  (the geometric mean over valid tokens)
        gating binary_kl  p log(p/q) + (1-p) log((1-p)/(1-q)),  p = pi_rollout, q = pi_old, both
                          clamped to [1e-6, 1 - 1e-6]; seq: its mean over valid tokens
        gating tv         |p - q| (same clamp); seq: its mean over valid tokens

        mode mask   weight = w where low <= stat <= high, 0 elsewhere (the unit is dropped)
        mode clip   weight = clamp(w, low, high)           (token level, ratio gating only: TIS)

    The weight multiplies each token's policy loss (after the dual clip, before aggregation).
    ``is_filter_ratio`` is the share of units out of band, ``vllm_kl`` the mean of log pi_rollout -
    log pi_old over valid tokens. Padding (mask 0) may hold any value, -inf included: it is read as
    log-probability 0, gets weight 1 and counts nowhere. A sequence without valid tokens is not a unit
    (OpenRLHF's 0/0 mean makes it NaN and counts it as filtered). A NaN log-probability on a valid token
    is treated as OpenRLHF treats it: its unit is dropped and counted as filtered with ``mask``; with
    ``clip`` its weight is NaN and it is not counted (NaN is neither below nor above the band).
    """
    low, high = check_rollout_correction(level, mode, gating, threshold)
    if level == "off":
        raise ValueError("level must be 'token' or 'seq' for rollout_correction (there is nothing to correct when off)")
    if rollout_log_probs is None:
        raise ValueError(
            f"rollout_log_probs (the rollout engine's log-probs) is required with is_correction_level={level!r}"
        )
    if rollout_log_probs.shape != old_log_probs.shape:
        raise ValueError(
            f"rollout_log_probs must have the shape of old_log_probs {tuple(old_log_probs.shape)}, "
            f"got {tuple(rollout_log_probs.shape)}"
        )
    with torch.no_grad():
        valid = mask != 0
        weight_mask = mask.to(old_log_probs.dtype)
        old = torch.where(valid, old_log_probs, 0.0)
        rollout = torch.where(valid, rollout_log_probs.to(old.dtype), 0.0)
        seq_level = level == "seq"
        tokens_per_sequence = weight_mask.sum(-1, keepdim=True)

        def sequence_mean(values: Tensor) -> Tensor:
            return (values * weight_mask).sum(-1, keepdim=True) / tokens_per_sequence.clamp_min(1.0)

        log_weight = old - rollout
        token_weight = log_weight.exp()
        if gating == "ratio":
            statistic = sequence_mean(log_weight).exp() if seq_level else token_weight
        else:
            p = rollout.exp().clamp(CORRECTION_PROBABILITY_CLAMP, 1 - CORRECTION_PROBABILITY_CLAMP)
            q = old.exp().clamp(CORRECTION_PROBABILITY_CLAMP, 1 - CORRECTION_PROBABILITY_CLAMP)
            if gating == "binary_kl":
                statistic = p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()
            else:
                statistic = (p - q).abs()
            if seq_level:
                statistic = sequence_mean(statistic)
        if mode == "clip":
            weights = statistic.clamp(low, high)
            filtered = (statistic < low) | (statistic > high)
        else:
            inside = (statistic >= low) & (statistic <= high)
            weights = torch.where(inside, token_weight, 0.0)
            filtered = ~inside
        weights = torch.where(valid, weights.expand_as(old), 1.0)
        units = tokens_per_sequence > 0 if seq_level else valid
        is_filter_ratio = (filtered & units).sum().to(old.dtype) / units.sum().clamp_min(1)
        vllm_kl = ((rollout - old) * weight_mask).sum() / weight_mask.sum().clamp_min(1.0)
    return RolloutCorrection(weights, filtered, is_filter_ratio, vllm_kl)


class BandPOPolicyLoss(nn.Module):
    """OpenRLHF's PolicyLoss with the ratio interval of a BandPO bound rule.

    Args:
        clip_eps_low, clip_eps_high: margins of the clip, clip-higher, band-relax, band-upper, band-lower
            and dcpo rules (ignored by ``band``, but range-checked for every rule: [0, 1) and >= 0).
        dual_clip: c > 1 caps the loss of negative-advantage tokens at -c A; None for no cap.
        token_level_loss: token-mean (True) or seq-mean-token-mean (False), as in OpenRLHF.
        policy_loss_type: must be ``"ppo"``.
        is_correction_level, is_correction_mode, is_correction_gating, is_correction_threshold:
            OpenRLHF's train/rollout correction (`rollout_correction`); off by default.
        bandpo_clip_method: one of `bandpo.rules.CLIP_METHODS` (band | band-relax | band-upper |
            band-lower | clip | clip-higher | dcpo).
        bandpo_divergence, bandpo_delta, bandpo_upper_max: the Band rule (published: kl, 0.05, 10);
            ``bandpo_upper_max`` also caps DCPO.
    """

    def __init__(
        self,
        clip_eps_low: float = 0.2,
        clip_eps_high: float = 0.2,
        dual_clip: float | None = None,
        token_level_loss: bool = True,
        policy_loss_type: str = "ppo",
        is_correction_level: str = "off",
        is_correction_mode: str = "mask",
        is_correction_gating: str = "ratio",
        is_correction_threshold: Sequence[float] = (0.5, 5.0),
        *,
        bandpo_clip_method: str = "band",
        bandpo_divergence: str = "kl",
        bandpo_delta: float = 0.05,
        bandpo_upper_max: float | None = 10.0,
    ) -> None:
        super().__init__()
        if policy_loss_type not in POLICY_LOSS_TYPES:
            raise ValueError(
                f"policy_loss_type must be 'ppo' for BandPOPolicyLoss, got {policy_loss_type!r} (BandPO bounds each "
                f"token's ratio from that token's old probability; GSPO's ratio is one per sequence)"
            )
        check_rollout_correction(is_correction_level, is_correction_mode, is_correction_gating, is_correction_threshold)
        check_number("dual_clip", dual_clip, low=1.0, low_open=True, allow_none=True)
        check_eps_low("clip_eps_low", clip_eps_low)
        check_number("clip_eps_high", clip_eps_high, low=0.0)
        check_clip_method(bandpo_clip_method, "bandpo_clip_method")
        self.rule: BoundRule = make_rule(
            bandpo_clip_method, divergence=bandpo_divergence, delta=bandpo_delta, upper_max=bandpo_upper_max,
            eps_low=clip_eps_low, eps_high=clip_eps_high,
        )
        self.dual_clip = dual_clip
        self.token_level_loss = token_level_loss
        self.policy_loss_type = policy_loss_type
        self.is_correction_level = is_correction_level
        self.is_correction_mode = is_correction_mode
        self.is_correction_gating = is_correction_gating
        self.is_correction_threshold = tuple(is_correction_threshold)
        self.last_metrics: dict[str, Tensor] = {}
        """BandPO's clip metrics (`bandpo.metrics`) of the latest forward, as detached tensors."""

    def forward(
        self,
        log_probs: Tensor,
        old_log_probs: Tensor,
        advantages: Tensor,
        action_mask: Tensor | None = None,
        rollout_log_probs: Tensor | None = None,
        dp_size: int = 1,
        batch_num_tokens: float | None = None,
        global_batch_size: float | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio) as OpenRLHF's PolicyLoss returns them.

        ``clip_ratio`` is the share of valid tokens whose gradient the bounds cut, ``ppo_kl`` the mean of
        log pi_old - log pi; ``vllm_kl`` and ``is_filter_ratio`` (`RolloutCorrection`) are None
        with the correction off, and ``rollout_log_probs`` is then unused.
        """
        mask = torch.ones_like(log_probs) if action_mask is None else action_mask
        terms = policy_terms(log_probs, old_log_probs, advantages, mask, clip=self.rule, dual_clip=self.dual_clip)
        loss_matrix = terms.loss_matrix
        vllm_kl = is_filter_ratio = None
        if self.is_correction_level != "off":
            correction = rollout_correction(
                terms.old_log_probs, rollout_log_probs, mask, level=self.is_correction_level,
                mode=self.is_correction_mode, gating=self.is_correction_gating, threshold=self.is_correction_threshold,
            )
            loss_matrix = loss_matrix * correction.weights.to(loss_matrix.dtype)
            vllm_kl, is_filter_ratio = correction.vllm_kl, correction.is_filter_ratio
        loss = global_aggregate(
            loss_matrix, terms.mask, self.token_level_loss, dp_size, batch_num_tokens, global_batch_size
        )
        self.last_metrics = terms.metrics()
        clip_ratio, ppo_kl = self.last_metrics["clip_ratio/region_mean"], self.last_metrics["policy/ppo_kl"]
        return loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio


class BandPOParameters(TypedDict, total=False):
    """BandPOPolicyLoss's ``bandpo_*`` keywords, those that are given."""

    bandpo_clip_method: str
    bandpo_divergence: str
    bandpo_delta: float
    bandpo_upper_max: float | None


def bandpo_parameters_from_environment(environment: Mapping[str, str]) -> BandPOParameters:
    """BandPOPolicyLoss keywords from ``BANDPO_*`` variables; an unknown ``BANDPO_*`` name is an error."""
    known = (*ENVIRONMENT_PARAMETERS, *OTHER_BANDPO_VARIABLES)
    unknown = sorted(name for name in environment if name.startswith("BANDPO_") and name not in known)
    if unknown:
        raise ValueError(
            f"unknown BandPO environment variable(s) {', '.join(unknown)}; accepted: {', '.join(ENVIRONMENT_PARAMETERS)}"
        )
    parameters: dict[str, object] = {}
    for name, (keyword, convert) in ENVIRONMENT_PARAMETERS.items():
        if name in environment:
            raw = environment[name]
            if keyword == "bandpo_upper_max" and raw.lower() in ("none", "null"):
                parameters[keyword] = None
                continue
            try:
                parameters[keyword] = convert(raw)
            except ValueError as error:
                raise ValueError(f"{name} must be a {convert.__name__}, got {raw!r}") from error
    # the keys and their converters come from ENVIRONMENT_PARAMETERS, which matches BandPOParameters
    return cast(BandPOParameters, parameters)


def use_bandpo_policy_loss(target_module: str = OPENRLHF_ACTOR_MODULE) -> None:
    """Make ``target_module.PolicyLoss`` build `BandPOPolicyLoss` with the ``BANDPO_*`` parameters.

    Meant as Ray's ``worker_process_setup_hook`` (it runs in every worker before OpenRLHF builds its
    trainer); the parameters are checked here, so a bad value fails at worker start.
    """
    parameters = bandpo_parameters_from_environment(os.environ)
    BandPOPolicyLoss(**parameters)  # validate before patching
    module: Any = importlib.import_module(target_module)  # OpenRLHF's actor module: untyped
    module.PolicyLoss = functools.partial(BandPOPolicyLoss, **parameters)


# ``bandpo check openrlhf``: a job's command line read by OpenRLHF's own parser, before any GPU is used.

TRAIN_PPO_RAY_MODULE = "openrlhf.cli.train_ppo_ray"
SETUP_HOOK = f"{__name__}.use_bandpo_policy_loss"
"""The ``worker_process_setup_hook`` that swaps BandPO's loss in."""


class OpenRLHFSettings(NamedTuple):
    """What OpenRLHF's actor will build: PolicyLoss's arguments, BandPO's keywords and the loss itself."""

    policy_loss_arguments: dict[str, Any]
    bandpo_parameters: dict[str, object]
    """Every ``bandpo_*`` keyword, from the environment or its default."""
    loss: BandPOPolicyLoss
    notes: tuple[str, ...]
    """OpenRLHF's own printed warnings, and what was not checked."""


class _RefusingParser(argparse.ArgumentParser):
    """argparse that raises ValueError where it would print usage and exit."""

    def error(self, message: str) -> Any:
        raise ValueError(f"OpenRLHF's train_ppo_ray refuses the arguments: {message}")


def _train_ppo_ray_main_block() -> tuple[list[ast.stmt], list[ast.stmt], str]:
    """The statements of train_ppo_ray's ``if __name__ == "__main__":`` block that build the parser, and
    those that check and complete the parsed arguments (``train(args)`` and the hub patch left out)."""
    spec = importlib.util.find_spec(TRAIN_PPO_RAY_MODULE)
    if spec is None or spec.origin is None:
        raise ImportError(f"{TRAIN_PPO_RAY_MODULE} not found")
    with open(spec.origin, encoding="utf-8") as source:
        tree = ast.parse(source.read(), filename=spec.origin)
    blocks = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    body = blocks[-1].body if blocks else []
    parse = [i for i, node in enumerate(body) if "parser.parse_args()" in ast.unparse(node)]
    if not parse:
        raise ImportError(f"{spec.origin} has no __main__ block calling parser.parse_args(): not OpenRLHF 0.11")

    def runs_training(node: ast.stmt) -> bool:
        return any(isinstance(name, ast.Name) and name.id in ("train", "patch_hub") for name in ast.walk(node))

    checks = [node for node in body[parse[0] + 1 :] if not runs_training(node)]
    return body[: parse[0]], checks, spec.origin


def policy_loss_arguments_from_train_ppo_ray(arguments: Sequence[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """PolicyLoss's constructor arguments as OpenRLHF 0.11's actor builds them from ``train_ppo_ray`` arguments,
    and OpenRLHF's printed warnings.

    Runs OpenRLHF's own parser and argument checks (its ``__main__`` block without the imports of Ray and
    vLLM and without ``train(args)``); their refusals become ValueError.
    """
    build, checks, filename = _train_ppo_ray_main_block()
    argparse_refusing = types.SimpleNamespace(**{**vars(argparse), "ArgumentParser": _RefusingParser})
    namespace: dict[str, Any] = {"argparse": argparse_refusing, "datetime": datetime.datetime, "os": os}
    exec(compile(ast.Module(body=build, type_ignores=[]), filename, "exec"), namespace)
    namespace["args"] = namespace["parser"].parse_args(list(arguments))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(ast.Module(body=checks, type_ignores=[]), filename, "exec"), namespace)
    except AssertionError as error:
        raise ValueError(f"OpenRLHF's train_ppo_ray refuses the arguments: {error}") from error
    except (AttributeError, TypeError) as error:
        raise ValueError(f"OpenRLHF's train_ppo_ray checks fail on these arguments: {error!r}") from error
    args = namespace["args"]
    policy_loss_arguments = {  # as openrlhf.trainer.ray.ppo_actor builds its PolicyLoss
        "clip_eps_low": args.actor.eps_clip_low_high[0],
        "clip_eps_high": args.actor.eps_clip_low_high[1],
        "dual_clip": args.actor.dual_clip,
        "token_level_loss": args.actor.loss_agg_mode == "token-mean",
        "policy_loss_type": args.actor.policy_loss_type,
        "is_correction_level": args.algo.advantage.is_correction_level,
        "is_correction_mode": args.algo.advantage.is_correction_mode,
        "is_correction_gating": args.algo.advantage.is_correction_gating,
        "is_correction_threshold": args.algo.advantage.is_correction_threshold,
    }
    return policy_loss_arguments, tuple(line for line in printed.getvalue().splitlines() if line.strip())


def _split_job_command_line(arguments: Sequence[str]) -> tuple[dict[str, str], dict | None, list[str]]:
    """(BANDPO_* assignments, the runtime env, train_ppo_ray arguments) of a command line written
    ``[BANDPO_X=V ...] [--runtime-env-json JSON] [--] [python3 -m openrlhf.cli.train_ppo_ray] ARGS...``."""
    assignments: dict[str, str] = {}
    runtime_env = None
    rest = list(arguments)
    while rest:
        token = rest[0]
        if token.startswith("BANDPO_") and "=" in token:
            name, value = token.split("=", 1)
            assignments[name] = value
            rest.pop(0)
        elif token.startswith("--runtime-env-json"):
            text = token.split("=", 1)[1] if "=" in token else (rest[1] if len(rest) > 1 else "")
            del rest[: 1 if "=" in token else 2]
            try:
                runtime_env = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(f"--runtime-env-json must be JSON, got {text!r}: {error}") from error
            if not isinstance(runtime_env, dict):
                raise ValueError(f"--runtime-env-json must be a JSON object, got {text!r}")
        else:
            break
    if rest[:1] == ["--"]:
        rest.pop(0)
    if len(rest) >= 3 and rest[1] == "-m" and rest[2] == TRAIN_PPO_RAY_MODULE:
        rest = rest[3:]
    return assignments, runtime_env, rest


def check_openrlhf_command_line(arguments: Sequence[str], environment: Mapping[str, str]) -> OpenRLHFSettings:
    """The BandPOPolicyLoss an OpenRLHF job would build, from its command line and ``environment``.

    ``arguments``: ``[BANDPO_X=V ...] [--runtime-env-json JSON] [--] [python3 -m
    openrlhf.cli.train_ppo_ray] ARGS...``. BandPO's parameters are the ``BANDPO_*`` variables of
    ``environment``, then of the runtime env's ``env_vars``, then of the assignments (later wins). The
    runtime env's ``worker_process_setup_hook`` must be `SETUP_HOOK`. ValueError for anything OpenRLHF or
    BandPOPolicyLoss refuses.
    """
    assignments, runtime_env, train_arguments = _split_job_command_line(arguments)
    notes: list[str] = []
    job_environment = {name: value for name, value in environment.items() if name.startswith("BANDPO_")}
    if runtime_env is None:
        notes.append("worker_process_setup_hook not checked (give the job's --runtime-env-json to check it)")
    else:
        hook = runtime_env.get("worker_process_setup_hook")
        if hook != SETUP_HOOK:
            raise ValueError(
                f"the runtime env's worker_process_setup_hook is {hook!r}, so OpenRLHF keeps its own PolicyLoss: "
                f"set it to {SETUP_HOOK!r}"
            )
        job_environment.update(runtime_env.get("env_vars") or {})
    job_environment.update(assignments)
    policy_loss_arguments, printed = policy_loss_arguments_from_train_ppo_ray(train_arguments)
    parameters = bandpo_parameters_from_environment(job_environment)
    loss = BandPOPolicyLoss(**policy_loss_arguments, **parameters)
    defaults = {
        name: parameter.default for name, parameter in inspect.signature(BandPOPolicyLoss).parameters.items()
        if name.startswith("bandpo_")
    }
    return OpenRLHFSettings(policy_loss_arguments, {**defaults, **parameters}, loss, (*printed, *notes))
