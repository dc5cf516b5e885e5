"""Sharded preparation on a cluster and training on its outputs: the Kubernetes Jobs deploy.data_job renders
(Indexed sign and write, one plan pod) have pod templates the real core/v1 schema accepts, and their commands,
run as the pods would, write shards whose documents are the one-machine run's token for token. Training reads
them directly: a source whose prefix is a glob (`PREFIX-*`) or a directory becomes one blend entry per shard,
weighted by the shard's tokens (checked against each shard's report), every shard checked as a source of its
own, and launch/pretrain.py trains on the glob. A glob matching nothing is one `error:` line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import yaml

from data.config import DataConfig, DataSource
from data.datasets import DataValidationError, blend_sources, build_pretrain_datasets
from data.pipeline import PrepareOptions, prepare, read_back
from data.shards import main as shards_main, merge, shard_prefix
from data.tokenizer import VOCAB_SIZE, load_tokenizer
from deploy import k8s
from deploy.data_job import DataJobOptions, build_jobs, job_errors, render_all
from tests.run_helpers import FAST, REPO, run_pretrain, train_losses
from tests.test_k8s import CRD

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = ["textwrap.py", "json/decoder.py", "json/encoder.py", "shlex.py", "fnmatch.py", "colorsys.py", "bisect.py",
         "heapq.py", "string.py", "glob.py"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(shards directory, the 2 shard prefixes, the one-machine prefix) for one small corpus of real files, the
    shards written by the commands of the Kubernetes Jobs deploy.data_job renders, run as their pods would."""
    work = tmp_path_factory.mktemp("shards")
    root = work / "src"
    root.mkdir()
    for name in FILES:
        shutil.copy(STDLIB / name, root / name.replace("/", "_"))
    prefix = work / "out" / "code"
    flags = ["--input", str(root), "--output-prefix", str(prefix), "--no-progress"]
    for job in build_jobs(flags, DataJobOptions(image="qwen-coder:test", pvc="corpus", num_shards=2, mount=str(work))):
        run_as_kubernetes_would(job)
    prepare(PrepareOptions(inputs=[root], output_prefix=work / "single", progress=False))
    return prefix.parent, [shard_prefix(prefix, index, 2) for index in range(2)], work / "single"


def run_as_kubernetes_would(job: dict) -> None:
    """Every pod of the Job, one after another: its container command with JOB_COMPLETION_INDEX set as
    Kubernetes sets it in an Indexed Job's pods (data.shards' main in this process: the image's `python -m`)."""
    spec = job["spec"]
    command = spec["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "data.shards"], command
    indices = range(spec["completions"]) if spec.get("completionMode") == "Indexed" else [None]
    for index in indices:
        with pytest.MonkeyPatch.context() as patch:
            if index is None:
                patch.delenv("JOB_COMPLETION_INDEX", raising=False)
            else:
                patch.setenv("JOB_COMPLETION_INDEX", str(index))
            patch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
            assert shards_main(command[3:]) == 0


def documents(prefixes) -> list:
    return [document for prefix in prefixes for document in read_back(prefix)]


def test_glob_blend_weights_shards_by_tokens_and_holds_the_one_machine_documents(prepared, gloo):
    directory, shards, single = prepared
    tokens = [json.loads(Path(f"{shard}.report.json").read_text())["tokens"] for shard in shards]
    assert min(tokens) > 0 and tokens[0] != tokens[1]  # unequal shards: a weight per source would differ
    cfg = DataConfig(sources=[DataSource("code", f"{directory}/code-*", 0.6), DataSource("text", str(single), 0.4)],
                     split="100,0,0")
    blend, summaries = blend_sources(cfg, VOCAB_SIZE, "qwen2.5")
    assert [s.prefix for s in blend.sources] == [str(shards[0]), str(shards[1]), str(single)]
    assert [s.name for s in blend.sources] == ["code:code-00000-of-00002", "code:code-00001-of-00002", "text"]
    assert blend.weights() == pytest.approx([0.6 * tokens[0] / sum(tokens), 0.6 * tokens[1] / sum(tokens), 0.4])
    by_directory, _ = blend_sources(DataConfig(sources=[DataSource("code", str(directory))]), VOCAB_SIZE, "qwen2.5")
    assert [s.prefix for s in by_directory.sources] == [str(shard) for shard in shards]

    # The union of the shards is the one-machine run, token for token; one shard alone is not (negative control).
    one_machine = read_back(single)
    assert sum(s.tokens for s in summaries[:2]) == summaries[2].tokens == sum(len(d) for d in one_machine)
    sharded = documents(shards)
    assert len(sharded) == len(one_machine) and all(np.array_equal(a, b) for a, b in zip(sharded, one_machine))
    first_only, _ = blend_sources(DataConfig(sources=[DataSource("code", f"{directory}/code-00000-*")]), VOCAB_SIZE,
                                  "qwen2.5")
    assert len(first_only.sources) == 1 and len(documents([first_only.sources[0].prefix])) < len(one_machine)

    # megatron's blend is built from the shards with those weights: samples per shard within one of weight x n.
    glob_only = DataConfig(sources=[DataSource("code", f"{directory}/code-*")], split="100,0,0", fim_rate=0.0)
    train, _ = build_pretrain_datasets(glob_only, 64, 400, 0, seed=1, tokenizer=load_tokenizer(backend="tiktoken"))
    blended = train.blend  # megatron's BlendedDataset
    assert [str(d.dataset.path_prefix) for d in blended.datasets] == [str(shard) for shard in shards]
    counts = np.bincount(np.asarray(blended.dataset_index), minlength=2)
    assert all(abs(counts[i] - len(train) * tokens[i] / sum(tokens)) <= 1 for i in range(2)), counts
    # Samples name the recipe's source (0: "code"), not the shard, for the per-source losses.
    assert {int(train[i]["dataset_id"]) for i in range(len(train))} == {0}
    assert {int(blended[i]["dataset_id"]) for i in range(len(train))} == {0, 1}


def test_every_shard_is_checked_and_an_empty_glob_is_an_error(prepared, tmp_path):
    directory, shards, _ = prepared
    stale = tmp_path / "stale"
    shutil.copytree(directory, stale)
    with open(stale / f"{shards[1].name}.bin", "ab") as handle:  # a shard's .bin no longer matches its .idx
        handle.write(b"\0\0\0\0")
    with pytest.raises(DataValidationError, match=r"'code:code-00001-of-00002'.*different or interrupted runs"):
        blend_sources(DataConfig(sources=[DataSource("code", f"{stale}/code-*")]), VOCAB_SIZE, "qwen2.5")
    with pytest.raises(DataValidationError, match=r"matches no prepared data"):
        blend_sources(DataConfig(sources=[DataSource("code", f"{directory}/kode-*")]), VOCAB_SIZE, "qwen2.5")


def test_pretrain_trains_on_a_glob_of_shards(prepared, tmp_path):
    directory, shards, _ = prepared
    run_dir = tmp_path / "run"
    common = ["+recipe=tiny", "parallel.tp=1", *FAST, "train.train_iters=2", "train.eval_interval=2",
              "train.eval_iters=1", "data.split='70,30,0'", "checkpoint.save_interval=0", f"run.dir={run_dir}"]
    done = run_pretrain(1, [*common, f"data.sources=[{{name: code, prefix: '{directory}/code-*', weight: 1.0}}]"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    losses = train_losses(run_dir)
    assert sorted(losses) == [1, 2] and all(np.isfinite(list(losses.values()))), losses
    validation = train_losses(run_dir, "val_loss/code")  # the shards' validation losses add up to the source's
    assert list(validation) == [2] and np.isfinite(validation[2]), validation
    log = "".join(path.read_text() for path in (run_dir / "logs").glob("*"))
    assert all(f"data source code:{shard.name}" in log for shard in shards), log[-3000:]

    missing = f"{directory}/kode-*"
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    failed = subprocess.run([sys.executable, "launch/pretrain.py", *common,
                             f"data.sources=[{{name: code, prefix: '{missing}', weight: 1.0}}]"],
                            cwd=REPO, env={**environment, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"},
                            capture_output=True, text=True, timeout=600)
    out = (failed.stdout + failed.stderr).strip()
    assert failed.returncode == 2 and out.count("\n") == 0 and out.startswith(
        f"error: data source 'code': '{missing}' matches no prepared data"), out


def test_a_shard_added_to_a_glob_changes_the_recorded_data_order(prepared, tmp_path):
    from deploy.k8s import compose_recipe
    from train.checkpoint import DataOrderChanged, check_data_order, data_order

    directory, shards, single = prepared
    copy = tmp_path / "out"
    shutil.copytree(directory, copy)
    recipe = compose_recipe(["+recipe=tiny", "parallel.tp=1", f"data.sources=[{{name: code, prefix: '{copy}/code-*'}}]"])
    saved = data_order(recipe)
    assert saved["shards"] == {"code": [str(copy / shard.name) for shard in shards]}
    check_data_order(copy, saved, recipe)  # unchanged: accepted
    for suffix in (".bin", ".idx", ".report.json"):
        shutil.copy(f"{shards[1]}{suffix}", copy / f"code-00002-of-00002{suffix}")
    with pytest.raises(DataOrderChanged, match="shards"):
        check_data_order(copy, saved, recipe)
    plain = compose_recipe(["+recipe=tiny", "parallel.tp=1", f"data.sources=[{{name: code, prefix: '{single}'}}]"])
    assert "shards" not in data_order(plain)  # a plain prefix records what it always did


def test_indexed_jobs_structure_schema_and_cli(tmp_path, capsys):
    flags = ["--input", "/data/raw", "--output-prefix", "/data/out/code", "--workers", "16"]
    jobs = build_jobs(flags, DataJobOptions(image="qwen-coder:test", pvc="corpus", num_shards=8, parallelism=4))
    assert [(job["apiVersion"], job["kind"], job["metadata"]["name"]) for job in jobs] == [
        ("batch/v1", "Job", f"qwen-prepare-{phase}") for phase in ("sign", "plan", "write")]
    sign, plan, write = (job["spec"] for job in jobs)
    for spec, phase in ((sign, "sign"), (write, "write")):
        assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 8, 4)
        container = spec["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "data.shards", phase, "--num-shards", "8", *flags]
        assert container["resources"]["requests"]["cpu"] == "16"  # prepare's --workers
    assert "completionMode" not in plan and (plan["completions"], plan["parallelism"]) == (1, 1)
    assert all(job_errors(job) == [] for job in jobs)

    # The pod template against the core/v1 PodTemplateSpec schema the PyTorchJob CRD embeds (closed, as
    # kubectl's strict field validation); batch/v1's own Job fields by job_errors.
    crd = k8s.load_crd_schema(CRD)
    template_schema = crd["properties"]["spec"]["properties"]["pytorchReplicaSpecs"]["additionalProperties"][
        "properties"]["template"]
    assert [k8s.schema_errors(spec["template"], template_schema) for spec in (sign, plan, write)] == [[], [], []]
    broken = json.loads(json.dumps(sign["template"]))
    broken["spec"]["containers"][0]["comand"] = broken["spec"]["containers"][0].pop("command")  # negative controls
    assert any("comand" in error for error in k8s.schema_errors(broken, template_schema))
    always = json.loads(json.dumps(jobs[0]))
    always["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    del always["spec"]["completions"]
    assert len(job_errors(always)) == 2

    from launch.data_job import main

    out = tmp_path / "prepare.yaml"
    assert main(["--num-shards", "8", "--parallelism", "4", "--image", "qwen-coder:test", "--pvc", "corpus", *flags,
                 "-o", str(out)]) == 0
    assert list(yaml.safe_load_all(out.read_text())) == jobs == list(yaml.safe_load_all(render_all(jobs)))
    capsys.readouterr()
    assert main(["--num-shards", "8", "--image", "i", "--pvc", "c", "--input", "/data/raw", "--output-prefix",
                 "/tmp/code"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --output-prefix /tmp/code is not under the volume's mount /data") and \
        "\n" not in err, err
    assert main(["--num-shards", "8", "--parallelism", "9", "--image", "i", "--pvc", "c", *flags]) == 1
    assert "--parallelism must be in [1, --num-shards 8]" in capsys.readouterr().err


def test_a_shard_without_documents_is_empty_and_missing_steps_are_one_error_line(tmp_path, capsys, monkeypatch):
    """Three shards over two files: one shard holds nothing (as one of N shards of a small corpus, or of one whose
    shard is all duplicates of others) and writes an empty .bin/.idx that training leaves out of the blend; each
    task takes its shard from SLURM_ARRAY_TASK_ID, as in a Slurm job array."""
    root = tmp_path / "src"
    root.mkdir()
    for name in ("bisect.py", "colorsys.py"):
        shutil.copy(STDLIB / name, root / name)
    prefix = tmp_path / "out" / "code"
    flags = ["--num-shards", "3", "--input", str(root), "--output-prefix", str(prefix), "--no-progress"]
    assert shards_main(["plan", *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: plan needs every shard's {prefix}-I-of-N.sign.npz; shards [0, 1, 2] have none: run `sign` for "
        "them first (all 3 shards must finish signing)"]
    assert shards_main(["write", *flags, "--shard-index", "0"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {prefix}.plan.json is missing")
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    for step in ("sign", "plan", "write"):
        for index in ([None] if step == "plan" else range(3)):
            if index is not None:  # a Slurm array task's index
                monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(index))
            assert shards_main([step, *flags]) == 0
    counts = [json.loads(Path(f"{shard_prefix(prefix, i, 3)}.report.json").read_text())["documents"] for i in range(3)]
    assert sorted(counts) == [0, 1, 1], counts
    prepare(PrepareOptions(inputs=[root], output_prefix=tmp_path / "single", progress=False))
    shards = [shard_prefix(prefix, i, 3) for i in range(3)]
    one_machine = read_back(tmp_path / "single")
    sharded = documents([shard for shard, count in zip(shards, counts) if count])  # megatron maps no empty .bin
    assert len(sharded) == len(one_machine) == 2 and all(np.array_equal(a, b) for a, b in zip(sharded, one_machine))
    merge(prefix, 3)
    for suffix in (".bin", ".idx"):
        assert Path(f"{prefix}{suffix}").read_bytes() == (tmp_path / f"single{suffix}").read_bytes()
    blend, _ = blend_sources(DataConfig(sources=[DataSource("code", f"{prefix}-*")]), VOCAB_SIZE, "qwen2.5")
    assert [s.prefix for s in blend.sources] == [str(shards[i]) for i in range(3) if counts[i]]


def test_shard_cost_bench_runs_and_checks_the_shards(tmp_path, capsys):
    from bench.shard_cost import main as shard_cost

    costs = shard_cost(["--input", str(STDLIB / "json"), "--work-dir", str(tmp_path)])  # raises if shards differ
    assert set(costs) == {"single", "sign", "plan", "write"} and all(value > 0 for value in costs.values())
    assert "identical to one prepare, token for token" in capsys.readouterr().out
