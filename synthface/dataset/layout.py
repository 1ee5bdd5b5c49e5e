"""The names of a ``generate`` output folder's files: the one place they are spelled.

::

    OUT/
      config.yaml          CONFIG_FILE: the resolved recipe (header: its hash)
      inputs.json          INPUTS_FILE: fingerprints of the model files, the identity plan's digest
      identities.parquet   IDENTITIES_FILE: one row per planned identity
      summary.json         SUMMARY_FILE: counts, timings, the config hash the shards were written with
      README.md            CARD_FILE: the dataset card
      data/                DATA_DIR: the shards and their commit markers
      filter/              FILTER_DIR: with filtering on, one record per shard

docs/design.md ("On disk") describes each file.
"""

from __future__ import annotations

import re

CONFIG_FILE = "config.yaml"
INPUTS_FILE = "inputs.json"  # what a run loaded: model file fingerprints and the identity plan's digest ("identities")
IDENTITIES_FILE = "identities.parquet"
SUMMARY_FILE = "summary.json"
CARD_FILE = "README.md"
DATA_DIR = "data"
FILTER_DIR = "filter"

# the files of a run in --out and in data/ (clean_temp removes only temp files of these)
RUN_FILES = re.compile("|".join(re.escape(name) for name in (CONFIG_FILE, IDENTITIES_FILE, SUMMARY_FILE, INPUTS_FILE, CARD_FILE)))
