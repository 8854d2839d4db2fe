"""A Lightning ``Callback`` that writes checkpoints and metrics into a wdb store.

    from wdb.integrations.lightning import WdbCallback
    trainer = lightning.Trainer(callbacks=[WdbCallback(db="runs.wdb", run="mlp-s0")])

At the end of every training epoch (or every ``every_n_steps`` optimizer steps) the module's
state dict becomes checkpoint ``trainer.global_step`` of the run, with ``trainer.callback_metrics``
as its reported metrics and the module's ``hparams`` (or ``config``) as the run config; see
:func:`wdb.integrations.log.log_checkpoint`. Only the global-zero process writes.
"""

from __future__ import annotations

import os
import time
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package
    from pytorch_lightning.callbacks import Callback

from wdb.integrations.log import database, log_checkpoint


class WdbCallback(Callback):
    """Write a checkpoint per training epoch, or per ``every_n_steps`` optimizer steps.

    ``run``: the run name (default ``<ModuleClass>-<date>-<time>``); ``db``: a path or a
    ``Database`` (default ``WDB_DB`` / ``./.wdb``); ``zoo``: the zoo the run belongs to;
    ``config``: the run config (default the module's ``hparams``).
    """

    def __init__(
        self,
        db: str | os.PathLike | Any = None,
        run: str | None = None,
        every_n_steps: int | None = None,
        zoo: str | None = None,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError("every_n_steps must be at least 1")
        self.db, self.run, self.every_n_steps = db, run, every_n_steps
        self.zoo, self.config = zoo, config
        self.logged: list[int] = []  # checkpoint ids written, in order
        self._last_step: int | None = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.run is None:
            self.run = f"{type(pl_module).__name__}-{time.strftime('%Y%m%d-%H%M%S')}"
        if self.config is None:
            self.config = dict(getattr(pl_module, "hparams", {}) or {}) or None
        if trainer.is_global_zero:
            self.db = database(self.db)  # open once, before the first epoch

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any, **kw: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._log(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.every_n_steps:
            self._log(trainer, pl_module)

    def _log(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        if not trainer.is_global_zero or step == self._last_step:
            return  # other ranks; gradient accumulation repeats a global step
        self._last_step = step
        self.logged.append(
            log_checkpoint(
                pl_module.state_dict(),
                run=str(self.run),
                step=step,
                metrics=dict(trainer.callback_metrics),
                config=self.config,
                db=self.db,
                zoo=self.zoo,
                meta={"framework": "lightning", "epoch": int(trainer.current_epoch)},
            )
        )
