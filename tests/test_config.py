"""Every config group composes with the real Hydra config and instantiates."""
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from bitsweep.harness.app import conf_dir, to_plain
from bitsweep.harness.cli import group_options
from bitsweep.harness.run import plan_run

GROUPS = ["model", "method", "quant", "data", "eval", "launcher", "experiment"]


def compose_cfg(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def test_default_config_plans(tmp_path):
    cfg = compose_cfg([f"store={tmp_path}"])
    plan = plan_run(to_plain(cfg))
    assert plan.method.config.name == "none" and "ppl" in plan.evaluators


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_instantiates(group, tmp_path):
    options = group_options(group)
    assert options, f"conf/{group} is empty"
    for opt in options:
        over = [f"{group}={opt}", f"store={tmp_path}"]
        if group == "model" and opt == "hf":
            over.append("model.id=some/model")
        if group == "quant":
            over.append("method=rtn")
        cfg = compose_cfg(over)
        if group == "launcher":
            assert cfg.hydra.launcher._target_, opt
            continue
        plain = to_plain(cfg)
        plan = _plan_with_some_spec(plain) if group == "method" else plan_run(plain)
        if group == "method":
            assert plan.method.config.name == plain["method"]["name"]
        if group == "eval":
            assert set(plan.evaluators) == set(plain["eval"])


def _plan_with_some_spec(plain):
    """Plan with the default quant spec, else the first preset the method accepts
    (e.g. LLM.int8() needs W8A8): every method must accept at least one preset."""
    from bitsweep.methods import ConfigError
    try:
        return plan_run(plain)
    except ConfigError as first:
        for q in group_options("quant"):
            cfg = to_plain(compose_cfg([f"method={plain['method']['name']}", f"quant={q}",
                                        f"store={plain['store']}"]))
            try:
                return plan_run(cfg)
            except ConfigError:
                continue
        raise first


def test_experiment_quickstart_is_a_multirun():
    cfg = compose_cfg(["experiment=quickstart"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert set(cfg.hydra.sweeper.params) == {"method", "quant"}
    assert cfg.leaderboard.out == "results/quickstart"
