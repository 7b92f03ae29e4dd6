"""What an adapters directory holds: one place that names every file and folder in it.

``adapters/<name>/`` is an adapter as a user publishes it (peft's two files, optionally its
profile, eval gate, traffic split and training record); entries that start with a dot are the
gateway's own (the kept versions, the staging area, the default database and playground ratings)
and never adapters. Each module that reads or writes one of these imports its name from here, so a
renamed file is one edit and a reader sees the whole directory in one screen.
"""

from __future__ import annotations

# An adapter's own files (peft writes the first two)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_FILES = ("adapter_model.bin", "pytorch_model.bin")  # refused: pickle runs code on load
PROFILE_FILE = "profile.json"  # request defaults: system prompt, sampling, chat template (registry.profile)
GATE_FILE = "eval.json"  # the eval gate a new version must pass (registry.gate_spec)
DEFAULT_TEST_SET = "eval_set.jsonl"  # the gate's questions, unless eval.json names another file
SPLIT_FILE = "split.json"  # a traffic split of the name (registry.splits): routing state, not a version
METADATA_FILE = "training_metadata.json"  # what the trainer ran (trainer.artifacts)
README_FILE = "README.md"  # a model card, or the directory's own readme (ignored at the top level)

# Files a version carries besides its config, weights and eval gate (copied when it is published).
EXTRA_FILES = (
    README_FILE,
    METADATA_FILE,
    "tokenizer_config.json",
    "chat_template.jinja",
    PROFILE_FILE,
    SPLIT_FILE,  # a canary published with its weights (``train --canary``)
)
# What an evaluation copies to serve an adapter directory in a throwaway gateway.
SERVED_FILES = (CONFIG_FILE, WEIGHTS_FILE, PROFILE_FILE)

# The gateway's own entries (a leading dot: never an adapter name, see registry.names)
STORE_DIR = ".kept"  # every proven version, by name and number (registry.store)
LEGACY_SNAPSHOTS = ".versions"  # an earlier release's store, read once and moved
STAGING_PREFIX = ".staging-"  # a publish being copied in, renamed into place when whole
DATABASE_FILE = ".gateway.db"  # the default database, unless --database names another
PLAYGROUND_RATINGS = ".ratings.jsonl"  # the playground's blind ratings without a database
SOURCE_STATE_FILE = ".source.json"  # what a watched remote source put here (registry.source_watch)
FINE_TUNING_DIR = ".fine-tuning"  # uploaded files and fine-tuning jobs' run directories (server.finetune)


def is_gateway_entry(name: str) -> bool:
    """Whether a top-level entry of the adapters directory is the gateway's, not an adapter."""
    return name.startswith(".")
