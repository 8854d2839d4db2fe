"""Writing checkpoints into a wdb store from a training loop.

- :func:`wdb.integrations.log.log_checkpoint` (also ``wdb.log_checkpoint``): one call per
  checkpoint, from any loop;
- :class:`wdb.integrations.lightning.WdbCallback`: a Lightning ``Callback``;
- :class:`wdb.integrations.hf.WdbTrainerCallback`: a Hugging Face ``TrainerCallback``.

The callbacks import their framework when their module is imported, never before: ``import wdb``
stays free of Lightning and transformers.
"""
