"""BandPO: probability-aware ratio bounds from f-divergence trust regions."""

from bandpo.aggregation import LOSS_AGG_MODES, aggregate
from bandpo.band import band
from bandpo.divergences import DIVERGENCES, Divergence, get_divergence
from bandpo.grpo import entropy_from_logits, group_advantages, kl_penalty
from bandpo.loss import per_token_policy_loss, policy_loss
from bandpo.metrics import clip_metrics, metrics_to_floats
from bandpo.room import RoomReport, room_report
from bandpo.rules import CLIP_METHODS, DCPO, Band, BoundRule, FixedClip, Sided, make_rule

__all__ = [
    "CLIP_METHODS",
    "DCPO",
    "DIVERGENCES",
    "LOSS_AGG_MODES",
    "Band",
    "BoundRule",
    "Divergence",
    "FixedClip",
    "RoomReport",
    "Sided",
    "aggregate",
    "band",
    "clip_metrics",
    "entropy_from_logits",
    "get_divergence",
    "group_advantages",
    "kl_penalty",
    "make_rule",
    "metrics_to_floats",
    "per_token_policy_loss",
    "policy_loss",
    "room_report",
]
__version__ = "0.1.0"
