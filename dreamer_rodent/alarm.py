"""The model-exploitation alarm: imagination that pays better than anything the real data paid.

An actor trained in imagination can find actions the world model rewards
wrongly (on the rat: imagined reward +0.63 per step while the real episodes
scored -1.6 with the rat on its back). The agent logs, every update,
`alarm/reward_excess`: the imagined reward per step minus the 95th percentile
of the rewards in the replayed batch. A policy that merely improves stays under
what the best replayed steps earned; a model being exploited does not. When the
logged excess stays above zero for `patience` log intervals in a row, one
warning line is printed; another only after it has cleared.

Beside it, `alarm/real_reward_gap`: the imagined reward per step minus the
reward per step the real episodes of the same log interval earned (their total
reward over their total length). The reward head on replayed states averages
over the whole replay, old random-action data included, so an improving policy
pulls ahead of it without exploiting anything; the real episodes are what the
current policy actually earns, and a gap that stays large there is the model
being exploited.
"""

from __future__ import annotations

from typing import Callable, Mapping

KEY = "train/alarm/reward_excess"


def real_reward_gap(metrics: Mapping[str, float]) -> float | None:
    """Imagined reward per step minus the real episodes' reward per step in one log interval's averages;
    None when the interval had no update or no finished episode."""
    imagined, score, length = (metrics.get(k) for k in ("train/imag/reward", "episode/score", "episode/length"))
    if imagined is None or score is None or not length:
        return None
    return float(imagined) - float(score) / float(length)


class ExploitationAlarm:
    def __init__(self, say: Callable[[str], None], patience: int = 3):
        self.say = say
        self.patience = patience
        self.streak = 0
        self.raised = False

    def update(self, step: int, metrics: Mapping[str, float]) -> float:
        """Feeds one log interval's averages; returns 1.0 while the alarm is raised, else 0.0."""
        excess = metrics.get(KEY)
        if excess is None:  # no training in this interval
            return float(self.raised)
        self.streak = self.streak + 1 if excess > 0 else 0
        if self.streak >= self.patience and not self.raised:
            self.raised = True
            gap = metrics.get("train/alarm/return_gap", float("nan"))
            self.say(
                f"warning: possible model exploitation at env step {step}: for {self.streak} log intervals the "
                f"imagined reward per step has exceeded the 95th percentile of the replayed rewards (now by "
                f"{excess:.3g}; imagined minus replayed return {gap:.3g}). The actor may be exploiting world-model "
                f"errors; watch episode/score, and consider a lower agent.ac_opt.lr or a higher run.train_ratio.")
        elif self.streak == 0 and self.raised:
            self.raised = False
            self.say(f"note: the exploitation alarm cleared at env step {step}.")
        return float(self.raised)
