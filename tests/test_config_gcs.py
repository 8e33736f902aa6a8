"""A config on gs:// parses like a local one (draccus itself only opens local files)."""

from __future__ import annotations

import pytest

from parsetune.errors import UserError
from pipelines.train import parse_config


def test_gcs_config_parses_with_overrides(gcs_bucket):
    gcs_bucket.blob("c/run.yaml").upload_from_string("method: {type: full}\nrun_dir: gs://x/runs/a\ntrainer: {train_batch_size: 4}\n")
    config = parse_config(f"gs://{gcs_bucket.name}/c/run.yaml", ["--trainer.train_batch_size", "8"])
    assert config.run_dir == "gs://x/runs/a" and config.trainer.train_batch_size == 8
    assert type(config.method).__name__ == "FullConfig"


def test_bad_gcs_config_names_the_gcs_path(gcs_bucket):
    gcs_bucket.blob("c/bad.yaml").upload_from_string("no_such_key: 1\n")
    path = f"gs://{gcs_bucket.name}/c/bad.yaml"
    with pytest.raises(UserError, match=path.replace(".", r"\.")):
        parse_config(path, [])
