"""BandPOConfig's own checks: every BandPO and clip field is range-checked whatever the rule, and TRL's
command-line parser can set every field, ``bandpo_upper_max`` None included (issue 17, items 11-12)."""

import math
import os

import pytest
from optional_packages import import_if_installed

import_if_installed("trl")
os.environ["HF_HUB_OFFLINE"] = "1"

from tiny_models import TINY_TRAINING_ARGS  # noqa: E402

from bandpo.integrations.trl import BandPOConfig  # noqa: E402


def config(tmp_path, **fields) -> BandPOConfig:
    return BandPOConfig(output_dir=str(tmp_path), **{**TINY_TRAINING_ARGS, **fields})


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"bandpo_clip_method": "clip", "bandpo_delta": -1.0}, "bandpo_delta"),
        ({"bandpo_clip_method": "clip", "bandpo_divergence": "js"}, "bandpo_divergence"),
        ({"bandpo_clip_method": "dcpo", "bandpo_divergence": "js"}, "bandpo_divergence"),
        ({"bandpo_clip_method": "clip-higher", "bandpo_upper_max": 0.5}, "bandpo_upper_max"),
        ({"bandpo_clip_method": "band", "epsilon": 5.0}, "epsilon"),
        ({"bandpo_clip_method": "band", "epsilon": math.nan}, "epsilon"),
        ({"bandpo_clip_method": "band", "epsilon_high": -0.1}, "epsilon_high"),
        ({"bandpo_clip_method": "band", "bandpo_dcpo_eps_low": math.nan}, "bandpo_dcpo_eps_low"),
        ({"bandpo_clip_method": "dcpo", "epsilon": 5.0}, "epsilon"),
    ],
)
def test_fields_the_rule_ignores_are_still_range_checked(tmp_path, fields, named):
    with pytest.raises(ValueError, match=f"^{named} must be"):
        config(tmp_path, **fields)


def test_in_range_fields_the_rule_ignores_leave_the_rule_alone(tmp_path):
    assert config(tmp_path, bandpo_clip_method="clip", bandpo_divergence="tv").bound_rule() == config(
        tmp_path, bandpo_clip_method="clip"
    ).bound_rule()


@pytest.mark.parametrize("parser", ["trl", "transformers"])
@pytest.mark.parametrize("text, expected", [("None", None), ("none", None), ("4", 4.0), ("inf", math.inf)])
def test_trl_parser_sets_upper_max_to_none_or_a_number(tmp_path, text, expected, parser):
    """TRL 1.16's TrlParser maps "none" to None for ``X | None`` fields; transformers' HfArgumentParser does not
    (it parses with float alone), so BandPOConfig reads the text itself and either parser can set None."""
    from transformers import HfArgumentParser
    from trl import TrlParser

    parser_class = {"trl": TrlParser, "transformers": HfArgumentParser}[parser]
    (parsed,) = parser_class((BandPOConfig,)).parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false", "--bandpo_upper_max", text]
    )
    assert parsed.bandpo_upper_max == expected
    cap = parsed.bound_rule().upper_max
    assert cap == expected


def test_upper_max_text_that_is_not_a_number_is_refused(tmp_path):
    with pytest.raises(ValueError, match="bandpo_upper_max must be None or a number >= 1, got 'ten'"):
        config(tmp_path, bandpo_upper_max="ten")
