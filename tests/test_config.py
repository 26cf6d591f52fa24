"""The app's Hydra config: every group option composes, unknown keys fail, configs match the code."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from slimjax.app import CONF_DIR, sweep_slug

REPO = Path(__file__).resolve().parents[1]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def make(overrides=(), hydra_cfg=False):
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)
    finally:
        GlobalHydra.instance().clear()


def test_top_level_conf_is_the_packaged_conf():
    assert (REPO / "conf").resolve() == Path(CONF_DIR).resolve()
    assert (Path(CONF_DIR) / "config.yaml").is_file()


def test_default_config():
    cfg = make()
    assert cfg.model.name == "mixtral_8x7b" and cfg.network.name == "edge_default" and cfg.routing.kind == "latent"
    assert cfg.precision == "float32" and cfg.resume is True and cfg.logger.kind == "none"
    assert len(cfg.solvers) >= 1 and cfg.batch_size >= 1
    # every solver file is merged under solver.<method>
    assert set(options("solver")) <= set(cfg.solver)


@pytest.mark.parametrize(
    "group",
    ["model", "network", "routing", "logger", "experiment"],
)
def test_every_group_option_composes(group):
    opts = options(group)
    assert opts, f"conf/{group} is empty"
    for o in opts:
        cfg = make([f"{group}={o}"])
        assert OmegaConf.to_container(cfg, resolve=False)  # composes
        if group in ("model", "network"):
            assert cfg[group].name == o


def test_expected_options_present():
    assert {
        "mixtral_8x7b",
        "mixtral_8x22b",
        "phi3_5_moe",
        "qwen1_5_moe_a2_7b",
        "deepseek_v2_lite",
        "olmoe_1b_7b",
        "qwen3_30b_a3b",
        "gpt_oss_20b",
        "deepseek_v3",
        "moe_llava_phi2",
    } <= set(options("model"))
    assert {"edge_default", "edge_small", "multi_user"} <= set(options("network"))
    assert {"latent", "zipf", "uniform", "trace"} <= set(options("routing"))
    assert {"none", "csv", "wandb"} <= set(options("logger"))
    assert {"capacity_sweep", "servers_sweep", "topk_sweep", "optimality_gap", "models", "runtime_scaling"} <= set(
        options("experiment")
    )


@pytest.mark.parametrize(
    "override",
    ["bogus=1", "network.bogus=3", "model.bogus=1", "solve_options.bogus=1", "logger.bogus=1"],
)
def test_unknown_keys_fail_with_hydras_message(override):
    with pytest.raises(ConfigCompositionException, match="Could not override"):
        make([override])


def test_unknown_group_option_fails():
    with pytest.raises(Exception, match="Could not find 'model/nonexistent'"):
        make(["model=nonexistent"])


def test_overrides_reach_the_config():
    cfg = make(
        [
            "network.servers=7",
            "network.storage_fraction=0.3",
            "model.top_k=4",
            "precision=float64",
            "solvers=[greedy,random]",
        ]
    )
    assert cfg.network.servers == 7 and cfg.network.storage_fraction == 0.3 and cfg.model.top_k == 4
    assert cfg.precision == "float64" and list(cfg.solvers) == ["greedy", "random"]


def test_model_presets_match_the_generator():
    from slimjax.generate import MODELS, get_model

    for o in options("model"):
        cfg = make([f"model={o}"])
        assert get_model(OmegaConf.to_container(cfg.model)) == MODELS[o], o


def test_network_and_routing_configs_are_valid_generator_configs():
    from slimjax.generate import NetworkConfig, RoutingConfig, as_network_config, as_routing_config

    for o in options("network"):
        d = OmegaConf.to_container(make([f"network={o}"]).network)
        d.pop("name")
        as_network_config(d)  # raises on unknown / invalid fields
    for o in set(options("routing")) - {"trace"}:
        as_routing_config(OmegaConf.to_container(make([f"routing={o}"]).routing))
    # the defaults shown to users are the generator's defaults
    d = OmegaConf.to_container(make().network)
    d.pop("name")
    assert as_network_config(d) == NetworkConfig()
    assert set(d) == {f.name for f in dataclasses.fields(NetworkConfig)}
    r = OmegaConf.to_container(make().routing)
    assert as_routing_config(r) == RoutingConfig()
    assert set(r) == {f.name for f in dataclasses.fields(RoutingConfig)}


def test_solver_files_match_the_solver_objects():
    import slimjax
    from slimjax.app import EXECUTION_KEYS, make_solver, solver_config

    cfg = make()
    named = set(slimjax.methods())
    files = set(options("solver"))
    missing = named - files
    assert not missing, f"named solvers without conf/solver/<name>.yaml: {sorted(missing)}"
    for name in sorted(files & named):
        opts = OmegaConf.to_container(cfg.solver[name])
        assert opts == solver_config(name), (
            f"conf/solver/{name}.yaml differs from the defaults of {slimjax.methods()[name]!r}; regenerate with "
            "python -c 'import slimjax.app as a; a.write_solver_configs()'"
        )
        assert make_solver(cfg, name) == slimjax.methods()[name]  # the file builds exactly the named solver
    common = OmegaConf.to_container(cfg.solve_options)
    assert set(common) == set(EXECUTION_KEYS)


@pytest.mark.parametrize(
    "launcher,target",
    [("local", "JoblibLauncher"), ("joblib", "JoblibLauncher"), ("slurm", "SlurmLauncher"), ("basic", "BasicLauncher")],
)
def test_launchers_compose(launcher, target):
    if launcher == "slurm":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = make([f"hydra/launcher={launcher}"], hydra_cfg=True)
    assert target in cfg.hydra.launcher._target_
    if launcher == "local":
        assert cfg.hydra.launcher.n_jobs == 2
    if launcher == "slurm":
        assert cfg.hydra.launcher.timeout_min > 0 and cfg.hydra.launcher.gpus_per_node == 1


def test_help_lists_every_solver_option():
    """`slimjax --help` shows the footer, built from the solver objects' own field docs."""
    import dataclasses

    import slimjax

    cfg = make(hydra_cfg=True)
    footer = cfg.hydra.help.footer  # resolves the help text like Hydra's --help does
    for name, obj in slimjax.methods().items():
        assert name in footer
        for stage in obj.stages():
            for f in dataclasses.fields(stage):
                line = f"{f.name} (default {f.default!r}): {f.metadata['doc']}".replace("$", "$$")
                assert line in footer, line


def test_hydra_settings():
    cfg = make(hydra_cfg=True)
    assert cfg.hydra.job.env_set.XLA_PYTHON_CLIENT_PREALLOCATE == "false"
    assert cfg.hydra.job.chdir is False
    assert "slimjax.app.CollectCallback" == cfg.hydra.callbacks.collect._target_
    # the console shows warnings only (the app prints its own lines, each once); the job log gets all
    assert cfg.hydra.job_logging.handlers.console.level == "WARNING"
    assert cfg.hydra.job_logging.root.level == "INFO"


@pytest.mark.parametrize(
    "study", ["capacity_sweep", "servers_sweep", "topk_sweep", "optimality_gap", "models", "runtime_scaling"]
)
def test_studies_are_multirun_grids(study):
    cfg = make([f"experiment={study}"], hydra_cfg=True)
    assert cfg.name == study
    assert str(cfg.hydra.mode) in ("MULTIRUN", "RunMode.MULTIRUN")
    assert cfg.hydra.sweeper.params, "a study sweeps something"
    assert cfg.collect.out == f"experiments/{study}" and cfg.collect.x
    assert cfg.hydra.sweep.dir.endswith(study)


def test_sweep_slug():
    assert sweep_slug([]) == "default"
    a = sweep_slug(["-m", "network.servers=2,4", "routing=latent,zipf", "logger=wandb", "batch_size=16"])
    b = sweep_slug(["--multirun", "batch_size=16", "logger=wandb", "routing=latent,zipf", "network.servers=2,4"])
    assert a == b == "batch_size=16__network.servers=2,4__routing=latent,zipf"
    # settings that do not change results do not move a run: adding them finds the same results
    same = ["logger=csv", "output.figures=false", "solve_options.chunk_size=8", "solve_options.memory_budget_mb=512",
            "stream.chunk=100", "distributed=true", "coordinator.process_id=1", "paths.jax_cache=null", "warmup=true"]
    assert sweep_slug(["-m", "network.servers=2,4", "routing=latent,zipf", "batch_size=16", *same]) == a
    # ... while those that do change results name a different directory
    assert sweep_slug(["solve_options.aggregation=sum"]) != sweep_slug([])
    assert sweep_slug(["solver.successive.order=given"]) != sweep_slug([])
    # hydra settings, resume and config-name flags do not change where a sweep lives
    assert (
        sweep_slug(["-m", "batch_size=16", "resume=false", "hydra/launcher=local", "-cn", "config"]) == "batch_size=16"
    )
    assert sweep_slug(["-m", "solvers=[a,b]", "x=a/b"]) == "solvers=a,b__x=a-b"
    long = sweep_slug(["-m"] + [f"k{i}=v{i}" for i in range(60)])
    assert len(long) <= 200 and "/" not in long and os.sep not in long
