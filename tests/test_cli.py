"""The CLI: valid commands work; bad input is one line on stderr with exit code 2."""

import ast
import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import prunelab.cli
from prunelab import data
from prunelab.cli import COMMANDS, main
from prunelab.data.dataset import Dataset
from prunelab.errors import PrunelabError
from prunelab.experiments.commands import sweep_from_options
from prunelab.experiments.config import identity_hash


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(res, *needles):
    assert res.exit_code == 2, res.output
    err = res.stderr.strip()
    assert "Traceback" not in res.output
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_list_and_help():
    res = invoke("list")
    assert res.exit_code == 0 and "lenet300" in res.output and "synflow" in res.output and "igq" in res.output
    # model options come from the builders' signatures; init is common to all
    assert "mlp(widths, bias=True)" in res.output and "vgg_scaled(depth=11, width=1.0, batch_norm=True)" in res.output
    assert "init='he' | 'torch'" in res.output
    res = invoke("train", "--help")
    assert res.exit_code == 0 and "--lr" in res.output and "--momentum" in res.output


@pytest.mark.parametrize(
    "args, needles",
    [
        (("train", "--model", "resnet99", "--dataset", "digits"), ("resnet99", "lenet300")),
        (("train", "--model", "mlp", "--widths", "8", "--dataset", "imagenet"), ("imagenet", "mnist")),
        (("train", "--model", "mlp", "--widths", "8", "--dataset", "digits", "--lr", "-0.5"), ("-0.5", "lr")),
        (("train", "--model", "vgg11", "--dataset", "digits", "--epochs", "1"), ("vgg11",)),
        (("run", "--dataset", "digits", "--criteria", "magnitud"), ("magnitud", "magnitude")),
        (("run", "--dataset", "digits", "--allocations", "erkk"), ("erkk", "igq")),
        (("run", "--dataset", "digits", "--sparsities", "1.5"), ("1.5",)),
        (("run", "--dataset", "digits", "--schedule", "weekly"), ()),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needles):
    res = invoke(*args)
    if args[-1] == "weekly":  # rejected by click's own choice check, also exit 2
        assert res.exit_code == 2 and "weekly" in res.output
        return
    assert_one_line_error(res, *needles)


def test_corrupt_and_truncated_dataset_files(tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (root / f"{name}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    res = invoke("train", "--model", "lenet300", "--dataset", "mnist", "--data-root", tmp_path, "--epochs", "1")
    assert_one_line_error(res, "mnist")
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    res = invoke("train", "--model", "lenet300", "--dataset", "mnist", "--data-root", tmp_path, "--epochs", "1")
    assert_one_line_error(res, "train-images-idx3-ubyte")


def test_bound_prints_log2_and_exact_integer():
    res = invoke("bound", "--widths", "2,3,10")
    # one hidden layer of 3 ReLUs on a 2-D input: C(3,0)+C(3,1)+C(3,2) = 7 regions
    assert res.exit_code == 0, res.output
    assert "7" in res.output and "log2" in res.output


def test_train_then_prune_then_regions(tmp_path):
    res = invoke("train", "--model", "mlp", "--widths", "16", "--dataset", "digits", "--epochs", "2",
                 "--out", tmp_path)
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("train-")]
    res = invoke("prune", run_dir, "--sparsity", "0.5", "--criterion", "magnitude", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    assert "before" in res.output and (tmp_path / "p" / "masks.safetensors").exists()
    res = invoke("regions", tmp_path / "p", "--line", "--samples", "2", "--inputs", "20")
    assert res.exit_code == 0, res.output
    assert "regions_mean" in res.output


def test_exact_compression_from_the_cli(tmp_path):
    res = invoke("train", "--model", "mlp", "--widths", "12,12", "--dataset", "digits", "--epochs", "3",
                 "--no-normalize", "--l1", "1e-3", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.startswith("train-")]
    res = invoke("exact", run_dir, "--time-limit", "60", "--data-samples", "500")
    assert res.exit_code == 0, res.output
    assert "verified" in res.output and (run_dir / "compressed.safetensors").exists()
    res = invoke("exact", run_dir, "--domain", "box:1,0")
    assert_one_line_error(res, "box:1,0")


# ------------------------------------------------------------------ one module per command, thin CLI
CLI_DIR = Path(prunelab.cli.__file__).parent
NOT_COMMANDS = {"__init__", "console", "options"}


def test_every_command_module_is_registered_once():
    modules = {p.stem for p in CLI_DIR.glob("*.py")} - NOT_COMMANDS
    assert set(COMMANDS.values()) == modules
    res = invoke("--help")
    assert res.exit_code == 0, res.output
    for name in COMMANDS:
        assert f"\n  {name} " in res.output, name
        assert main.get_command(None, name).name == name


def test_list_loads_no_training_or_experiment_code():
    code = ("import sys; from click.testing import CliRunner; from prunelab.cli import main; "
            "r = CliRunner().invoke(main, ['list']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in sys.modules if m.startswith(('prunelab.train', 'prunelab.experiments'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_command_modules_do_no_tensor_work():
    """Library logic lives in the library: a command module parses, calls and prints."""
    for path in CLI_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in ("torch", "numpy", "hashlib"), f"{path.name} imports {name}"
                assert name != "prunelab", f"{path.name} imports the root facade"


def test_model_kwargs_must_be_a_json_object():
    res = invoke("train", "--model", "mlp", "--dataset", "digits", "--model-kwargs", "[8]")
    assert_one_line_error(res, "--model-kwargs", "[8]", "JSON object")


def test_train_folder_is_the_identity_hash_without_the_device(tmp_path):
    common = ("train", "--model", "mlp", "--widths", "8", "--dataset", "digits", "--epochs", "1")
    assert invoke(*common, "--out", tmp_path).exit_code == 0
    (run_dir,) = tmp_path.iterdir()
    meta = json.loads((run_dir / "config.json").read_text())
    identity = {k: meta[k] for k in ("model", "dataset", "model_kwargs", "val_fraction", "normalize", "train")}
    assert "device" not in identity["train"] and identity["model_kwargs"] == {"widths": [8]}
    assert run_dir.name == f"train-{identity_hash(identity)}"
    assert invoke(*common, "--device", "cpu", "--out", tmp_path).exit_code == 0
    assert [p.name for p in tmp_path.iterdir()] == [run_dir.name]  # same experiment, same folder
    assert invoke(*common, "--seed", "1", "--out", tmp_path).exit_code == 0
    assert len(list(tmp_path.iterdir())) == 2


def test_sweep_from_options_is_the_file_plus_the_flags(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('dataset = "digits"\nmodel = "mlp"\ncriteria = ["magnitude", "random"]\n'
                    "[train]\nlr = 0.05\nepochs = 5\n")
    sweep = sweep_from_options(path, base={"model": None, "device": "cpu"}, epochs=2, finetune_epochs=1,
                               criteria=["snip"], sparsities=[0.5, 0.8])
    assert (sweep.base.dataset, sweep.base.model, sweep.base.device) == ("digits", "mlp", "cpu")
    assert (sweep.base.train.lr, sweep.base.train.epochs) == (0.05, 2)
    assert (sweep.base.finetune.lr, sweep.base.finetune.epochs) == (0.05, 1)
    assert sweep.criteria == ["snip"] and sweep.sparsities == [0.5, 0.8]
    with pytest.raises(PrunelabError, match="magnitud"):
        sweep_from_options(path, criteria=["magnitud"])


# --------------------------------------------------------------- the pixel box in the input space
def test_input_box_maps_each_channel_through_its_normalisation():
    ds = Dataset(name="two", x_train=torch.zeros(1, 2, 1, 2), y_train=torch.zeros(1, dtype=torch.long),
                 x_test=torch.zeros(1, 2, 1, 2), y_test=torch.zeros(1, dtype=torch.long), x_val=None, y_val=None,
                 mean=(0.5, 0.1), std=(0.5, 0.2), num_classes=2, input_shape=(2, 1, 2), class_names=["a", "b"])
    lower, upper = ds.input_box(0.0, 1.0)
    assert lower.dtype == torch.float64 and lower.shape == (4,)
    # channel-major, as x.flatten(): (0 - 0.5) / 0.5 = -1, (0 - 0.1) / 0.2 = -0.5, ...
    assert torch.allclose(lower, torch.tensor([-1.0, -1.0, -0.5, -0.5], dtype=torch.float64))
    assert torch.allclose(upper, torch.tensor([1.0, 1.0, 4.5, 4.5], dtype=torch.float64))
    for low, high, needle in ((1.0, 0.0, "[1.0, 0.0]"), (float("nan"), 1.0, "nan"), ("0", 1.0, "'0'")):
        with pytest.raises(PrunelabError, match=re.escape(needle)):
            ds.input_box(low, high)


def test_input_box_holds_the_normalised_data_exactly_when_pixels_span_it():
    raw = data.load("digits", normalize=False)
    lower, upper = raw.input_box(0.0, 1.0)
    assert torch.equal(lower, torch.zeros(64, dtype=torch.float64))
    assert torch.equal(upper, torch.ones(64, dtype=torch.float64))
    norm = data.load("digits")
    lower, upper = norm.input_box(0.0, 1.0)
    x = norm.x_train.reshape(len(norm.x_train), -1).double()
    assert ((x >= lower - 1e-6) & (x <= upper + 1e-6)).all()
    assert torch.allclose(x.min(dim=0).values.min(), lower.min(), atol=1e-6)  # black pixels sit on the bound


def test_exact_on_standardised_inputs_verifies_on_every_test_image(tmp_path):
    res = invoke("train", "--model", "mlp", "--widths", "8", "--dataset", "digits", "--epochs", "1",
                 "--out", tmp_path)
    assert res.exit_code == 0, res.output
    (run_dir,) = tmp_path.iterdir()
    res = invoke("exact", run_dir, "--time-limit", "30", "--data-samples", "300", "--method", "per_unit")
    assert res.exit_code == 0, res.output
    n_test = len(data.load("digits").y_test)
    assert f"verified on {n_test + 10000} points" in " ".join(res.output.split()), res.output
