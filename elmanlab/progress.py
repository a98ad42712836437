"""What a training run shows on the terminal as it goes (rank 0, with ``progress`` on): the progress
bar (steps, or seconds of a time budget) with the loss, the held-out loss and tokens/s, and a
warning when the budget passes over the training split more than ``EPOCHS_WARN`` times."""
from __future__ import annotations

import math
import sys

EPOCHS_WARN = 4         # a budget that covers the training split more often than this gets a warning


class Progress:
    """The terminal of one run of the loop of the trainer ``tr`` (which it reads, never changes)."""

    def __init__(self, tr):
        from tqdm import tqdm
        self.tr = tr
        self.epochs_warned = False
        cfg = tr.cfg
        if cfg.steps is not None:
            self.bar = tqdm(total=cfg.steps, initial=tr.step, unit="step", dynamic_ncols=True, mininterval=0.5,
                            disable=not (cfg.progress and tr.is_main), desc=f"train {cfg.model.model}")
        else:
            self.bar = tqdm(total=round(60 * cfg.minutes), initial=round(tr.timers["train_s"]), unit="s",
                            dynamic_ncols=True, mininterval=0.5, disable=not (cfg.progress and tr.is_main),
                            desc=f"train {cfg.model.model}", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s "
                            "[{elapsed}<{remaining}{postfix}]")

    def update(self, loss_v: float) -> None:
        """After a step with loss ``loss_v``: the new figures, and the bar advanced."""
        self.bar.set_postfix_str(self._postfix(loss_v), refresh=False)
        self.bar.update(1 if self.tr.cfg.steps is not None else round(self.tr.timers["train_s"]) - self.bar.n)

    def show(self, loss_v: float) -> None:
        """After a held-out evaluation: the figures again, at once."""
        self.bar.set_postfix_str(self._postfix(loss_v), refresh=True)

    def close(self) -> None:
        self.bar.close()

    def _postfix(self, loss_v: float) -> str:
        tps = self.tr.tokens_per_s()
        txt = f"loss {loss_v:.4f}" if math.isfinite(loss_v) else f"loss {loss_v}"
        last, best = (self.tr.validator.history or [None])[-1], self.tr.validator.best()
        if last is not None:
            txt += f", val {last['val_loss']:.4f}" + (f" (best {best['val_loss']:.4f})" if best is not last else "")
        return txt + (f", {tps:,.0f} tok/s" if tps else "")

    def check_epochs(self) -> None:
        """Warn once when the budget covers the training split more than EPOCHS_WARN times."""
        tr, cfg = self.tr, self.tr.cfg
        if self.epochs_warned or not tr.is_main:
            return
        per_step = cfg.batch_size * cfg.seq_len
        planned = cfg.steps * per_step if cfg.steps is not None else tr.tokens
        epochs = planned / tr.split.train_bytes
        if epochs > EPOCHS_WARN:
            self.epochs_warned = True
            what = f"{cfg.steps:,} steps" if cfg.steps is not None else "the steps so far"
            sys.stderr.write(f"warning: {what} of {cfg.batch_size} x {cfg.seq_len} bytes pass over the "
                             f"training split ({tr.split.train_bytes:,} bytes) {epochs:.1f} times: watch the "
                             f"held-out loss (--eval-every) and consider --dropout or more data\n")
