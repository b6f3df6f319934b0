"""Where each data file lives inside a data root: the one list of paths that the readers
(`harness.data`, the task readers), the up-front checks and `harness data fetch` share."""

C4_FILE = "c4/c4_validation_2k.jsonl.gz"  # shipped: 2000 C4 'en' validation documents
WIKITEXT2_FILE = "wikitext2/wikitext-2-raw-v1.test.jsonl.gz"  # shipped (fetch re-creates it from the hub)
C4_TRAIN_FILE = "c4/c4-train.00000-of-01024.jsonl.gz"  # fetched: the papers' calibration shard
SLIMPAJAMA_FILE = "slimpajama/slimpajama-6b-train.jsonl.gz"  # fetched: LEAP's training corpus
HELLASWAG_FULL_FILE = "hellaswag/hellaswag_validation.jsonl.gz"  # fetched: all 10042 rows, HF schema
