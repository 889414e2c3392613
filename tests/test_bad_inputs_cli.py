"""Bad input on the command line: each row a command and the exact one-line message; exit 2, no traceback.

(The library-level table for prunelab.prune is tests/pruning/test_bad_inputs.py.)
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from prunelab.cli import main

FILES = {
    "empty.csv": b"",
    "header.csv": b"a,b\n",
    "bin.csv": b"\x00\x01\x02",
    "seed.toml": b'dataset = "digits"\n[train]\nseed = 5\n',
    "bad.toml": b"dataset = \n",
    "opt.toml": b'dataset = "digits"\n[prune]\ncriterion = "synflow"\noptions = { iteratons = 3 }\n',
    "alloc.toml": b'dataset = "digits"\n[model_kwargs]\nwidths = [8]\n[prune]\nallocation = { "nope.weight" = 0.5 }\n',
    "sched.toml": b'dataset = "digits"\n[prune]\nschedule = "imp"\nschedule_options = { rat = 0.5 }\n',
    "analysis.toml": b'dataset = "digits"\nanalyses = [{ name = "units", options = { sampels = 3 } }]\n',
    "afile": b"x",
}

CASES = [
    (["run", "--sparsities", "1.5"], "invalid run options: sparsities=[1.5]: sparsity 1.5 is outside [0, 1)"),
    (["run", "--sparsities", "0.5,abc"], "--sparsities '0.5,abc' must be a comma-separated list of float"),
    (["run", "--criteria", "magnitud"],
     "invalid run options: unknown criterion 'magnitud'; valid: cbs, grasp, lamp, magnitude, random, snip, "
     "synflow, upa, woodfisher"),
    (["run", "{d}/seed.toml"],
     "invalid config: base.train: train.seed is not used in a run: the run's seed (top-level `seed` / `seeds`) "
     "seeds training, and fine-tuning uses seed + 1"),
    (["run", "{d}/bad.toml"], "config file '{d}/bad.toml' is not valid TOML: Invalid value (at line 1, column 11)"),
    (["run", "{d}/missing.toml"], "config file '{d}/missing.toml' does not exist"),
    (["run", "{d}/opt.toml"],
     "invalid config: base.prune: unknown option 'iteratons' for criterion 'synflow' / allocation 'global'; "
     "valid: iterations"),
    (["run", "{d}/sched.toml"],
     "invalid config: base.prune: unknown option 'rat' for schedule 'imp'; valid: rate, rewind_iteration, counting"),
    (["run", "{d}/analysis.toml"],
     "invalid config: base: unknown option 'sampels' for analysis 'units'; valid: split, samples"),
    (["run", "{d}/alloc.toml"], "explicit allocation names layer 'nope.weight', which is not prunable; layers: "
     "1.weight, 3.weight"),
    (["run", "--out", "{d}/afile/sub"], "cannot write to output folder '{d}/afile/sub': Not a directory"),
    (["train", "--lr", "inf"], "invalid training options: lr=inf: Input should be a finite number"),
    (["train", "--model", "nope"],
     "unknown model 'nope'; valid: lenet300, lenet5, mlp, mlpnet, resnet18, resnet20, resnet32, resnet56, vgg11, "
     "vgg13, vgg16, vgg19, vgg_scaled"),
    (["train", "--dataset", "nope"], "unknown dataset 'nope'; valid: cifar10, cifar100, digits, fashion_mnist, "
     "mnist, synthetic"),
    (["report", "{d}/empty.csv"], "results table '{d}/empty.csv' is empty; expected a CSV with a header row and "
     "one row per run (as `prunelab run` writes)"),
    (["report", "{d}/header.csv"], "results table '{d}/header.csv' has a header but no rows; expected one row "
     "per run"),
    (["report", "{d}/bin.csv"], "results table '{d}/bin.csv' is a binary file (NUL byte at offset 0); expected "
     "a UTF-8 text CSV"),
    (["reproduce"], "give a reproduction NAME, or --list to see them"),
    (["regions", "{d}"], "'{d}' is not a run folder: expected config.json and model.safetensors there (written "
     "by `prunelab train` or `prunelab run`)"),
    (["exact", "{d}"], "'{d}' is not a run folder: expected config.json and model.safetensors there (written "
     "by `prunelab train` or `prunelab run`)"),
    (["bound", "--widths", "x"], "--widths 'x' must be a comma-separated list of int"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    for name, content in FILES.items():
        (d / name).write_bytes(content)
    return d


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_cli_input_is_one_line_and_exit_2(args, message, folder, tmp_path):
    args = [a.format(d=folder) for a in args]
    if args[0] in ("run", "train") and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, args)
    err = result.stderr.strip()
    assert result.exit_code == 2, (result.exit_code, err, result.exception)
    assert "Traceback" not in result.output + err
    assert err == f"error: {message.format(d=folder)}"
    assert not (tmp_path / "out" / "runs").exists()  # nothing ran


def test_unknown_reproduction_names_the_valid_ones(folder):
    result = CliRunner().invoke(main, ["reproduce", "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: unknown reproduction 'nope'; valid: ")
    assert "effective-sparsity" in result.stderr
