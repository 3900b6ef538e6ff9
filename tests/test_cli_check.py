"""Specification of ``bandpo check`` where the engine is not installed (the engine parts are in
tests/integrations): exit 2, naming the package to install, before anything else is read.

The engine is made absent whatever is installed: ``sys.modules[name] = None`` makes ``import name``
raise ModuleNotFoundError, as a missing package does.
"""

from __future__ import annotations

import sys

import pytest

from bandpo.cli.main import main


@pytest.fixture
def without(monkeypatch):
    def hide(*modules: str) -> None:
        for name in list(sys.modules):
            if name.startswith("bandpo.integrations."):
                monkeypatch.delitem(sys.modules, name)
        for name in modules:
            monkeypatch.setitem(sys.modules, name, None)

    return hide


@pytest.mark.parametrize(
    ("engine", "arguments", "install"),
    [
        ("verl", ["actor_rollout_ref.actor.policy_loss.loss_mode=bandpo"], "pip install 'verl>=0.9,<0.10'"),
        ("openrlhf", ["--actor.eps_clip", "0.2"], "pip install --no-deps 'openrlhf>=0.11,<0.12' deepspeed"),
    ],
)
def test_a_missing_engine_exits_2_naming_the_package_to_install(engine, arguments, install, without, capsys):
    without(engine)
    assert main(["check", engine, *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == f"bandpo check: error: bandpo check {engine} needs {engine}, which is not installed: {install}"


def test_an_unknown_engine_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_status:
        main(["check", "trl", "x=1"])
    assert exit_status.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice: 'trl'" in error and "openrlhf" in error and "verl" in error
