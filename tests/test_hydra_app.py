"""launch/pretrain.py and launch/plan.py are Hydra applications, run here as a user types them (subprocess, in an
empty working directory that must stay empty): `--cfg job` prints the same recipe the Compose API composes
(recipes.compose), `--cfg all` adds Hydra's node as recipes/config.yaml sets it, `--help` lists the groups and
options, `--info` Hydra's view of the search path, `--shell-completion install=bash` the completion script, a
composition error is one `error:` line (exit 2), `-m` sweeps train each point in its own run directory
(run.dir/0, run.dir/1, different seeds give different losses), and `-m` inside torchrun is refused with one line.
launch/k8s.py's and launch/pipeline.py's `--cfg job` print what their pretrain.py commands compose.
Cost ~2 min on 2 cores (the sweep trains two 2-step tiny runs in one process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from recipes.compose import compose_config
from tests.run_helpers import FAST, prepare_code_dataset

REPO = Path(__file__).resolve().parents[1]


def app(script: str, *args: str, cwd: Path, torchrun: bool = False) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2"] if torchrun else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    return subprocess.run([*launcher, str(REPO / "launch" / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def empty_cwd(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    yield cwd
    assert list(cwd.iterdir()) == []  # no outputs/, no .hydra/, no log file, no run directory


@pytest.mark.parametrize("script", ["pretrain.py", "plan.py"])
def test_cfg_job_prints_the_composed_recipe(script, empty_cwd):
    overrides = ["+recipe=7b", "stage=repo", "parallel.tp=4"]
    done = app(script, *overrides, "--cfg", "job", cwd=empty_cwd)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    assert printed == OmegaConf.to_container(compose_config(overrides))  # interpolations as written
    assert printed["parallel"]["tp"] == 4 and printed["model"]["shape"] == "7b" and "hydra" not in printed

    if script == "plan.py":
        return
    done = app(script, *overrides, "--cfg", "all", cwd=empty_cwd)
    hydra_node = yaml.safe_load(done.stdout)["hydra"]
    assert hydra_node["run"]["dir"] == "." and hydra_node["job"]["chdir"] is False
    assert hydra_node["sweep"] == {"dir": "${run.dir}", "subdir": "${hydra.job.num}"}
    assert hydra_node["output_subdir"] is None


def test_help_info_and_shell_completion(empty_cwd):
    done = app("pretrain.py", "--help", cwd=empty_cwd)
    assert done.returncode == 0, done.stderr
    assert "== Configuration groups ==" in done.stdout
    assert "recipe: 0.5b, 1.5b, 14b, 32b, 3b, 7b, tiny" in done.stdout and "stage: dpo, file, long, repo, sft" in done.stdout
    assert "seq_length:" in done.stdout and "Powered by Hydra" in done.stdout
    done = app("pretrain.py", "+recipe=tiny", "--info", "searchpath", cwd=empty_cwd)
    assert done.returncode == 0 and "Config search path" in done.stdout, done.stderr
    rows = done.stdout.splitlines()
    assert any(row.startswith("| main") and row.rstrip(" |").endswith("/recipes") for row in rows), done.stdout
    done = app("pretrain.py", "--shell-completion", "install=bash", cwd=empty_cwd)
    assert done.returncode == 0 and "hydra_bash_completion()" in done.stdout, done.stderr


@pytest.mark.parametrize("script", ["pretrain.py", "plan.py"])
def test_composition_error_is_one_line(script, empty_cwd):
    done = app(script, "+recipe=tiny", "paralel.tp=2", cwd=empty_cwd)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: Could not override 'paralel.tp'.\nTo append to your config use +paralel.tp=2"
    assert "Traceback" not in done.stderr + done.stdout


def test_multirun_sweep_trains_each_point_in_its_own_run_dir(tmp_path, empty_cwd):
    prefix = prepare_code_dataset(tmp_path, packages=("json",))
    sweep = tmp_path / "sweep"
    done = app("pretrain.py", "-m", "+recipe=tiny", "parallel.tp=1", "train.seed=1,2", *FAST,
               "train.train_iters=2", "train.eval_interval=0", "checkpoint.save_interval=2", "logging.plots=false",
               f"data.sources=[{{name: code, prefix: {prefix}, weight: 1.0}}]", "data.split='60,40,0'",
               f"run.dir={sweep}", cwd=empty_cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    losses = []
    for point in ("0", "1"):
        records = [json.loads(line) for line in (sweep / point / "metrics.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in records if "loss" in r])
        assert len(losses[-1]) == 2 and (sweep / point / "checkpoints" / "latest").is_file()
    assert losses[0] != losses[1]  # seed 1 and seed 2: two runs, not one resumed


def test_multirun_inside_torchrun_is_refused(empty_cwd):
    done = app("pretrain.py", "-m", "+recipe=tiny", "train.seed=1,2", "run.dir=runs/never", cwd=empty_cwd,
               torchrun=True)
    out = (done.stdout + done.stderr).strip()
    assert done.returncode != 0
    assert out.count("error: -m/--multirun inside torchrun: launch one torchrun per point") == 1, out
    assert "Traceback" not in out and "ChildFailedError" not in out, out
    (empty_cwd / "runs" / "never" / "multirun.yaml").unlink()  # Hydra's sweeper wrote it before the job started
    for directory in (empty_cwd / "runs" / "never" / "0", empty_cwd / "runs" / "never", empty_cwd / "runs"):
        directory.rmdir()  # nothing else: no checkpoint, no log


def test_k8s_and_pipeline_cfg_job_print_what_their_pretrain_commands_compose(tmp_path, empty_cwd):
    """launch/k8s.py and launch/pipeline.py are argparse tools around launch/pretrain.py; their `--cfg job` prints
    the recipe each pretrain.py command they write will compose, checked against that command run with Hydra's
    own `--cfg job`. Negative control: the pod's recipe is not the bare recipe (run.dir is the volume's)."""
    manifest_file = tmp_path / "job.yaml"
    done = app("k8s.py", "+recipe=7b", "stage=repo", "--image", "img", "--pvc", "runs", "-o", str(manifest_file),
               cwd=empty_cwd)
    assert done.returncode == 0, done.stderr
    command = yaml.safe_load(manifest_file.read_text())["spec"]["pytorchReplicaSpecs"]["Master"]["template"][
        "spec"]["containers"][0]["command"]
    pod_overrides = command[command.index("launch/pretrain.py") + 1:]
    printed = app("k8s.py", "+recipe=7b", "stage=repo", "--cfg", "job", cwd=empty_cwd)
    assert printed.returncode == 0, printed.stderr
    reference = app("pretrain.py", *pod_overrides, "--cfg", "job", cwd=empty_cwd)
    assert yaml.safe_load(printed.stdout) == yaml.safe_load(reference.stdout)
    assert yaml.safe_load(printed.stdout)["run"]["dir"] == "/runs/qwen-7b-repo"
    bare = yaml.safe_load(app("pretrain.py", "+recipe=7b", "stage=repo", "--cfg", "job", cwd=empty_cwd).stdout)
    assert bare["run"]["dir"] != "/runs/qwen-7b-repo"

    typo = app("k8s.py", "+recipe=7b", "paralel.tp=2", "--cfg", "job", cwd=empty_cwd)
    assert typo.returncode == 1 and typo.stderr.startswith("error: Could not override 'paralel.tp'.")
    assert "Traceback" not in typo.stderr

    pipeline = ["+recipe=tiny", f"--dir={tmp_path / 'pipeline'}", "sft:optimizer.lr=1e-5"]
    plan = app("pipeline.py", *pipeline, "--plan", cwd=empty_cwd)
    assert plan.returncode == 0, plan.stderr
    commands = {line[1:line.index("]")]: line.split(": ", 1)[1].split() for line in plan.stdout.splitlines()
                if line.startswith("[") and "pretrain.py" in line}
    documents = app("pipeline.py", *pipeline, "--cfg", "job", cwd=empty_cwd)
    assert documents.returncode == 0, documents.stderr
    recipes = dict(zip(["file", "repo", "sft", "dpo"], yaml.safe_load_all(documents.stdout)))
    assert list(commands) == list(recipes) and recipes["sft"]["optimizer"]["lr"] == 1e-5
    for step in ("repo", "sft"):
        words = commands[step]
        overrides = words[next(i for i, w in enumerate(words) if w.endswith("pretrain.py")) + 1:]
        assert recipes[step] == yaml.safe_load(app("pretrain.py", *overrides, "--cfg", "job", cwd=empty_cwd).stdout)
    assert not (tmp_path / "pipeline").exists()
