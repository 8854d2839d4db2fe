"""Reading checkpoint files safely (torch zip and legacy pickles, safetensors, shard sets,
``.npz``): what the ``ingest/`` readers and the ingest pipeline use. Never runs pickle code."""
