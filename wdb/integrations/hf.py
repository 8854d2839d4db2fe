"""A Hugging Face ``TrainerCallback`` that writes checkpoints and metrics into a wdb store.

    from wdb.integrations.hf import WdbTrainerCallback
    trainer = transformers.Trainer(..., callbacks=[WdbTrainerCallback(db="runs.wdb", run="ft-1")])

Each time the Trainer saves (``on="save"``, the default: follows ``save_strategy`` /
``save_steps``) or evaluates (``on="evaluate"``), the model's state dict becomes checkpoint
``state.global_step`` of the run; the metrics logged at that step (loss, learning rate, eval
metrics) become its reported metrics, and the ``TrainingArguments`` (plus ``model.config`` when
the model has one, under ``model``) the run config; see
:func:`wdb.integrations.log.log_checkpoint`. Only the main process writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from wdb.integrations.log import database, log_checkpoint


class WdbTrainerCallback(TrainerCallback):
    """Write a checkpoint on every save (``on="save"``) or evaluation (``on="evaluate"``).

    ``run``: the run name (default ``args.run_name``, else the output folder's name); ``db``: a
    path or a ``Database`` (default ``WDB_DB`` / ``./.wdb``); ``zoo``; ``config``: the run config
    (default the training arguments and the model's config).
    """

    def __init__(
        self,
        db: str | os.PathLike | Any = None,
        run: str | None = None,
        on: str = "save",
        zoo: str | None = None,
        config: dict | None = None,
    ) -> None:
        if on not in ("save", "evaluate"):
            raise ValueError(f"on must be 'save' or 'evaluate', not {on!r}")
        self.db, self.run, self.on, self.zoo, self.config = db, run, on, zoo, config
        self.logged: list[int] = []  # checkpoint ids written, in order
        self._last_step: int | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        named = args.run_name if args.run_name not in (None, "", args.output_dir) else None
        self.run = self.run or named or Path(args.output_dir).name
        if self.config is None:
            self.config = {k: v for k, v in args.to_dict().items() if not k.startswith("_")}
            if getattr(model, "config", None) is not None and hasattr(model.config, "to_dict"):
                self.config["model"] = model.config.to_dict()
        if state.is_world_process_zero:
            self.db = database(self.db)

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        if self.on == "save":
            self._log(state, model, {})

    def on_evaluate(
        self, args: Any, state: Any, control: Any, model: Any = None, metrics: Any = None, **kw: Any
    ):
        if self.on == "evaluate":
            self._log(state, model, metrics or {})

    def _log(self, state: Any, model: Any, extra: dict) -> None:
        step = int(state.global_step)
        if model is None or not state.is_world_process_zero or step == self._last_step:
            return
        self._last_step = step
        metrics: dict[str, Any] = {}
        for entry in state.log_history:  # what the Trainer logged at this step
            if entry.get("step") == step:
                metrics.update(entry)
        metrics.update(extra)
        metrics.pop("step", None)
        self.logged.append(
            log_checkpoint(
                model.state_dict(),
                run=str(self.run),
                step=step,
                metrics=metrics,
                config=self.config,
                db=self.db,
                zoo=self.zoo,
                meta={"framework": "transformers", "epoch": state.epoch},
            )
        )
