"""Checkpoints straight from a training loop: ``wdb.log_checkpoint`` and the Lightning and
Hugging Face callbacks, each driving a real ``Trainer`` on a tiny model on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import wdb
from wdb.errors import BadInput


def _data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, (x @ torch.tensor([1.0, -2.0, 0.5, 3.0]))[:, None]


def _meta(db, run: str) -> dict[int, dict]:
    rows = db.sql(
        "SELECT c.step, c.meta FROM checkpoints c JOIN runs r ON r.id = c.run_id "
        "WHERE r.name = :n ORDER BY c.step",
        {"n": run},
    )
    return {r["step"]: json.loads(r["meta"]) for r in rows}


def test_log_checkpoint_writes_rows_metrics_config_and_lineage(db):
    model = torch.nn.Linear(4, 2)
    ids = []
    for step in (0, 10, 20):
        with torch.no_grad():
            model.weight.add_(0.1)
        ids.append(
            wdb.log_checkpoint(
                model,
                run="loop",
                step=step,
                metrics={"loss": torch.tensor(1.0 / (step + 1))},
                config={"lr": 0.1, "opt": {"name": "sgd"}},
                db=db.path,
                zoo="toy",
            )
        )
    got = db.state_dict(ids[-1])
    for k, v in model.state_dict().items():
        assert torch.equal(got[k], v), k
    meta = _meta(db, "loop")
    assert "parent_checkpoint_id" not in meta[0]
    assert meta[10]["parent_checkpoint_id"] == ids[0] and meta[20]["parent_step"] == 10
    runs = db.search_runs("run = 'loop'").df()
    assert runs.loc[0, "params.opt.name"] == "sgd" and runs.loc[0, "params.lr"] == 0.1
    assert runs.loc[0, "metrics.loss"] == pytest.approx(1 / 21)
    assert runs.loc[0, "checkpoints"] == 3 and runs.loc[0, "zoo"] == "toy"
    # the same step again: same weights give the stored id, others fail in one line
    assert wdb.log_checkpoint(model.state_dict(), run="loop", step=20, db=db) == ids[-1]
    with torch.no_grad():
        model.bias.add_(1.0)
    with pytest.raises(BadInput, match="step 20: already stored with different content"):
        wdb.log_checkpoint(model.state_dict(), run="loop", step=20, db=db)
    with pytest.raises(BadInput, match="different config"):
        wdb.log_checkpoint(model.state_dict(), run="loop", step=30, config={"lr": 1}, db=db)
    with pytest.raises(BadInput, match="NaN or Inf"):
        wdb.log_checkpoint({"w": torch.tensor([float("nan")])}, run="bad", step=0, db=db)
    assert not db.sql("SELECT * FROM runs WHERE name = 'bad'")


def test_lightning_callback_in_a_real_fit(db, tmp_path):
    lightning = pytest.importorskip("lightning", reason="lightning is not installed")
    from wdb.integrations.lightning import WdbCallback

    class Tiny(lightning.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    cb = WdbCallback(db=db.path, run="pl-tiny", zoo="toy")
    module = Tiny()
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, loader)
    rows = db.search_checkpoints("run = 'pl-tiny'").df()
    assert list(rows["step"]) == [4, 8]  # 4 batches an epoch
    assert rows["params.lr"].tolist() == [0.05, 0.05]
    assert rows["metrics.train_loss"].notna().all()
    assert rows["metrics.train_loss"].iloc[1] < rows["metrics.train_loss"].iloc[0]
    meta = _meta(db, "pl-tiny")
    assert meta[8]["parent_step"] == 4 and meta[8]["epoch"] == 1
    # the last checkpoint is the trained module, bit for bit
    last = db.state_dict(int(rows["checkpoint_id"].iloc[-1]))
    for k, v in module.state_dict().items():
        assert torch.equal(last[k], v), k
    assert cb.logged == rows["checkpoint_id"].tolist()


def test_lightning_callback_every_n_steps(db, tmp_path):
    lightning = pytest.importorskip("lightning", reason="lightning is not installed")
    from wdb.integrations.lightning import WdbCallback

    class Tiny(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x, y = _data(24)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    trainer = lightning.Trainer(
        max_epochs=1,
        accelerator="cpu",
        callbacks=[WdbCallback(db=db, run="pl-n", every_n_steps=2)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Tiny(), loader)
    assert [c["step"] for c in db.checkpoints("run = 'pl-n'")] == [2, 4, 6]


def test_hf_trainer_callback_in_a_real_train(db, tmp_path):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    from wdb.integrations.hf import WdbTrainerCallback

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def forward(self, x, labels=None):
            out = self.net(x)
            return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}

    x, y = _data()
    data = [{"x": x[i], "labels": y[i]} for i in range(len(x))]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "hf-out"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=0.05,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    cb = WdbTrainerCallback(db=db.path, run="hf-tiny", zoo="toy")
    model = Tiny()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[cb])
    trainer.train()
    rows = db.search_checkpoints("run = 'hf-tiny'").df()
    assert list(rows["step"]) == [2, 4]
    assert rows["params.learning_rate"].tolist() == [0.05, 0.05]
    assert rows["params.max_steps"].tolist() == [4, 4]
    assert rows["metrics.loss"].notna().all()
    assert _meta(db, "hf-tiny")[4]["parent_step"] == 2
    last = db.state_dict(int(rows["checkpoint_id"].iloc[-1]))
    for k, v in model.state_dict().items():
        assert torch.equal(last[k], v), k
    assert np.isfinite(rows["metrics.learning_rate"]).all()
