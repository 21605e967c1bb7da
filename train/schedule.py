"""The one-cycle learning-rate and momentum schedule (fastai's ``fit_one_cycle``), resumable."""

from __future__ import annotations

import math

import torch


class OneCycle:
    """fastai's ``fit_one_cycle``: LR cosine up from lr/25 over 25% of steps, then cosine down to lr/25e5,
    with Adam's beta1 cycled 0.95 -> 0.85 -> 0.95 the opposite way. Valid for any number of steps.
    """

    def __init__(self, opt: torch.optim.Optimizer, lr_max: float, total: int, pct_start: float = 0.25):
        self.opt, self.lr_max, self.total, self.warm = opt, lr_max, max(total, 1), pct_start * max(total, 1)
        self.step_num = 0
        self._apply()

    @staticmethod
    def _cos(a: float, b: float, p: float) -> float:
        return b + (a - b) * (1 + math.cos(math.pi * min(max(p, 0.0), 1.0))) / 2

    def values(self, step: int) -> tuple[float, float]:
        if step < self.warm:
            p = step / self.warm
            return self._cos(self.lr_max / 25, self.lr_max, p), self._cos(0.95, 0.85, p)
        p = (step - self.warm) / max(self.total - self.warm, 1)
        return self._cos(self.lr_max, self.lr_max / 25 / 1e5, p), self._cos(0.85, 0.95, p)

    def _apply(self) -> None:
        lr, beta1 = self.values(self.step_num)
        for g in self.opt.param_groups:
            g["lr"] = lr
            if "betas" in g:
                g["betas"] = (beta1, g["betas"][1])

    def step(self) -> None:
        self.step_num += 1
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"step_num": self.step_num}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_num = int(state["step_num"])
        self._apply()
