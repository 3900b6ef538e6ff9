"""``bandpo check verl|openrlhf ARGS...``: what an engine will run, checked by the engine itself, before any GPU.

``verl``: ARGS are the overrides of ``python3 -m verl.trainer.main_ppo``; they are composed with verl's
own ``ppo_trainer`` config and the actor config is built as verl's workers build it
(`bandpo.integrations.verl.check_verl_overrides`).

``openrlhf``: ARGS are ``[BANDPO_X=V ...] [--runtime-env-json JSON] [--] [python3 -m
openrlhf.cli.train_ppo_ray] ARGS...``; OpenRLHF's own parser reads them and BandPOPolicyLoss is built
as the actor builds its loss (`bandpo.integrations.openrlhf.check_openrlhf_command_line`).

Prints the resolved BandPO settings (exit 0), or the error with its fix (exit 2, from ``bandpo.cli.main``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, NamedTuple

ENGINE_PACKAGES = {
    "verl": ("verl", "pip install 'verl>=0.9,<0.10'"),
    "openrlhf": ("openrlhf", "pip install --no-deps 'openrlhf>=0.11,<0.12' deepspeed"),
}
"""Each engine: the package ``check`` needs, and how to install it."""


class CheckPlan(NamedTuple):
    engine: str
    settings: list[tuple[str, str]]
    notes: tuple[str, ...]


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("engine", choices=sorted(ENGINE_PACKAGES), help="the engine whose command line to check")
    parser.add_argument(
        "arguments", nargs=argparse.REMAINDER, metavar="ARGS",
        help="verl: the overrides of verl.trainer.main_ppo; openrlhf: [BANDPO_X=V ...] [--runtime-env-json JSON] "
             "[--] the arguments of openrlhf.cli.train_ppo_ray",
    )


def _import_integration(engine: str) -> Any:
    """``bandpo.integrations.<engine>``, or ImportError naming the package to install."""
    import importlib

    package, install = ENGINE_PACKAGES[engine]
    try:
        module = importlib.import_module(f"bandpo.integrations.{engine}")
        if engine == "openrlhf":
            importlib.import_module(package)  # the integration itself needs only torch
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] != package:
            raise
        raise ImportError(f"bandpo check {engine} needs {package}, which is not installed: {install}") from error
    return module


def _number(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def verl_plan(arguments: list[str]) -> CheckPlan:
    verl = _import_integration("verl")
    s = verl.check_verl_overrides(arguments)
    ignored = " (not used by band)" if s.clip_method == "band" else ""
    settings = [
        ("loss_mode", verl.BANDPO_LOSS_MODE),
        ("clip method", s.clip_method),
        ("divergence", s.divergence),
        ("delta", _number(s.delta)),
        ("upper_max", _number(s.upper_max)),
        ("margins", f"clip_ratio_low {_number(s.clip_ratio_low)}, clip_ratio_high {_number(s.clip_ratio_high)}{ignored}"),
        ("dual clip", f"clip_ratio_c {_number(s.dual_clip)}" if s.dual_clip is not None else "off (clip_ratio_c inf)"),
        ("loss_agg_mode", s.loss_agg_mode if s.loss_scale_factor is None
         else f"{s.loss_agg_mode} (loss_scale_factor {_number(s.loss_scale_factor)})"),
        ("rule", repr(s.rule)),
    ]
    return CheckPlan("verl", settings, s.notes)


def openrlhf_plan(arguments: list[str]) -> CheckPlan:
    openrlhf = _import_integration("openrlhf")
    s = openrlhf.check_openrlhf_command_line(arguments, os.environ)
    loss, arguments_of = s.loss, s.policy_loss_arguments
    parameters = s.bandpo_parameters
    clip_method = parameters["bandpo_clip_method"]
    ignored = " (not used by band)" if clip_method == "band" else ""
    correction = "off" if loss.is_correction_level == "off" else (
        f"level {loss.is_correction_level}, mode {loss.is_correction_mode}, gating {loss.is_correction_gating}, "
        f"threshold {tuple(loss.is_correction_threshold)}"
    )
    settings = [
        ("clip method", clip_method),
        ("divergence", str(parameters["bandpo_divergence"])),
        ("delta", _number(parameters["bandpo_delta"])),
        ("upper_max", _number(parameters["bandpo_upper_max"])),
        ("margins", f"clip_eps_low {_number(arguments_of['clip_eps_low'])}, "
                    f"clip_eps_high {_number(arguments_of['clip_eps_high'])}{ignored}"),
        ("dual clip", _number(loss.dual_clip) if loss.dual_clip is not None else "off"),
        ("loss_agg_mode", "token-mean" if loss.token_level_loss else "seq-mean-token-mean"),
        ("correction", correction),
        ("rule", repr(loss.rule)),
    ]
    return CheckPlan("openrlhf", settings, s.notes)


def configure_check(args: argparse.Namespace) -> CheckPlan:
    """The resolved settings; ValueError with the fix for a wrong command line, ImportError naming the package."""
    return verl_plan(list(args.arguments)) if args.engine == "verl" else openrlhf_plan(list(args.arguments))


def run_check(plan: CheckPlan) -> int:
    print(f"bandpo check {plan.engine}: BandPO will run with")
    width = max(len(name) for name, _ in plan.settings)
    for name, value in plan.settings:
        print(f"  {name:<{width}}  {value}")
    for note in plan.notes:
        print(f"note: {note}")
    return 0
