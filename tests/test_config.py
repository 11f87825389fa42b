"""The config system: presets stack in order, flags override, bad input names the fix."""

import pytest

from dreamer_rodent.config import Config, ConfigError, build_config, parse_args, with_cpu_preset


def test_presets_stack_in_order_then_flags_win():
    config = build_config(["size12m", "size1m"], {"agent.units": "96"})
    assert config.agent.rssm.deter == 512  # size1m came last
    assert config.agent.units == 96  # the flag beats every preset
    assert isinstance(config.agent.units, int)


def test_command_line_parsing_types_and_lists():
    config, extra = parse_args(
        ["--configs", "debug", "--env.keys", "image,proprio", "--run.steps", "1e5", "--task", "rodent_goto",
         "--checkpoint", "some/dir", "--jax.debug_nans"],
        extra_flags={"checkpoint": ""},
    )
    assert config.env.keys == ("image", "proprio")
    assert config.run.steps == 1e5 and isinstance(config.run.steps, float)
    assert config.task == "rodent_goto"
    assert config.jax.debug_nans is True
    assert extra == {"checkpoint": "some/dir"}
    assert config.batch_size == 4  # from the debug preset


def test_negative_numbers_are_values_not_flags():
    config, _ = parse_args(["--env.egl_device", "-1", "--seed", "-3"])
    assert config.seed == -3


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'run.stepz'.*'run.steps'"):
        build_config([], {"run.stepz": 5})
    with pytest.raises(ConfigError, match=r"'run.train_ratio'"):
        parse_args(["--run.train_ration", "3"])


def test_unknown_preset_names_closest_and_lists_known():
    with pytest.raises(ConfigError, match=r"unknown config preset 'size12'.*'size12m'.*Known presets"):
        build_config(["size12"])


def test_wrong_type_names_key_and_expected_type():
    with pytest.raises(ConfigError, match=r"'run.envs' expects a value of type int"):
        build_config([], {"run.envs": "four"})
    with pytest.raises(ConfigError, match=r"'jax.debug_nans' expects a value of type bool"):
        build_config([], {"jax.debug_nans": "maybe"})


def test_save_load_roundtrip_and_update(tmp_path):
    config = build_config(["debug"])
    config.save(tmp_path / "config.yaml")
    loaded = Config.load(tmp_path / "config.yaml")
    assert loaded == config
    changed = loaded.update({"run.envs": 7})
    assert changed.run.envs == 7 and loaded.run.envs == config.run.envs
    with pytest.raises(ConfigError, match="unknown config key"):
        loaded.update({"run.nope": 1})


def test_task_flag_applies_that_tasks_defaults_under_later_presets_and_flags():
    from dreamer_rodent.config import parse_args

    config, _ = parse_args(["--task", "mouse_goto"])
    assert config.task == "mouse_goto" and config.task_kwargs.success_radius == 0.025
    assert list(config.task_kwargs.curriculum_levels) == [0.07, 0.14, 0.23, 0.36, 0.54]
    config, _ = parse_args(["--configs", "debug", "--task", "mouse_goto", "--task_kwargs.success_radius", "0.03"])
    assert config.task_kwargs.success_radius == 0.03 and config.batch_size == 4
    config, _ = parse_args(["--task", "ball_goto"])
    assert config.task_kwargs.success_radius == 0.05 and config.env.time_limit == 5.0
    config, _ = parse_args(["--task", "rodent_two_touch"])  # no task preset: the defaults
    assert config.env.time_limit == 30.0 and config.agent.units == 256


def test_default_task_applies_its_preset_unless_a_preset_picks_the_task():
    from dreamer_rodent.config import parse_args

    config, _ = parse_args([])  # the default task, ball_goto, with its preset
    assert config.task == "ball_goto" and config.env.time_limit == 5.0 and config.agent.units == 32
    config, _ = parse_args(["--configs", "rodent_goto"])  # that preset sets the task: no ball preset under it
    assert config.task == "rodent_goto" and config.agent.units == 256 and config.env.time_limit == 10.0
    assert config.env.action_repeat == 2 and config.agent.rec_scales.task == 10.0 and config.agent.rec_scales.proprio == 1


def cpu_sized(argv, platform="cpu"):
    config, _ = parse_args(argv)
    return with_cpu_preset(argv, config, platform)


def test_on_a_cpu_a_run_that_names_no_model_size_gets_the_cpu_preset_under_the_users_flags():
    small = build_config(["cpu_small"])
    config, note = cpu_sized(["--task", "rodent_goto", "--configs", "proprio_only", "--run.train_ratio", "8"])
    assert note and "cpu_small" in note and "--jax.cpu_preset ''" in note and "camera" not in note
    _, note = cpu_sized(["--task", "rodent_goto"])
    assert "camera" in note and "proprio_only" in note
    assert config.agent.rssm.deter == small.agent.rssm.deter and config.agent.actor_grad == small.agent.actor_grad
    assert config.env.action_repeat == 2 and config.agent.rec_scales.task == 10.0  # the task's preset stays
    assert list(config.env.keys) == ["vestibular", "proprio", "task"] and config.run.train_ratio == 8  # the user's win
    default, _ = parse_args(["--task", "rodent_goto"])
    assert default.agent.rssm.deter == 2048  # what a GPU gets


@pytest.mark.parametrize("argv,platform", [
    (["--task", "rodent_goto"], "gpu"),                                   # a GPU keeps the paper's size
    (["--task", "rodent_goto", "--configs", "size12m"], "cpu"),           # a size preset
    (["--task", "rodent_goto", "--agent.units", "128"], "cpu"),            # a size flag
    (["--task", "rodent_goto", "--jax.cpu_preset", ""], "cpu"),           # turned off
    (["--task", "ball_goto"], "cpu"),                                     # the task's own preset sizes it
])
def test_the_cpu_preset_leaves_a_sized_run_a_gpu_run_and_an_opt_out_alone(argv, platform):
    before, _ = parse_args(argv)
    config, note = cpu_sized(argv, platform)
    assert note is None and config == before


def test_an_unknown_cpu_preset_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="cpu_smal"):
        cpu_sized(["--task", "rodent_goto", "--jax.cpu_preset", "cpu_smal"])
