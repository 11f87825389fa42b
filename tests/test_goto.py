"""Go-to-target: success bonus, posture penalty, no contact resets, curriculum."""

import numpy as np
import pytest

from dreamer_rodent.config import build_config
from dreamer_rodent.env import make_env
from tasks import base

NO_IMAGE = ["vestibular", "proprio", "task"]


def _env(task, **flags):
    flags.setdefault("env.keys", NO_IMAGE)
    flags.setdefault("env.image_size", 16)
    return make_env(build_config(flags={"task": task, **flags}))


def _task(env):
    return env._env.task


def _potential(distance, scale=0.5):
    return 1.0 - np.tanh(distance / scale)


def test_head_at_target_earns_the_success_bonus_and_respawns_it():
    env = _env("rodent_goto")
    env.step({"reset": True})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    # Far away: no bonus.
    far = env.step({"action": zero, "reset": False})
    assert far["log/success"] == 0 and far["reward"] < 1.0
    head = env.physics.bind(env.walker.head).xpos
    _task(env).set_target(env.physics, head[:2])
    obs = env.step({"action": zero, "reset": False})
    assert obs["log/success"] == 1.0
    assert obs["reward"] > 9.5  # success_bonus (the head drifted a little: a small progress term)
    assert obs["log/targets_reached"] == 1.0
    # The target moved on, and the episode goes on (success is not terminal).
    assert obs["log/distance"] > 0.05
    assert not obs["is_last"] and not obs["is_terminal"]
    env.close()


def test_success_step_is_scored_against_the_target_reached_not_its_respawn():
    env = _env("rodent_goto")
    env.step({"reset": True})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    env.step({"action": zero, "reset": False})
    reached = np.array(env.physics.bind(env.walker.head).xpos[:2])
    _task(env).set_target(env.physics, reached)
    obs = env.step({"action": zero, "reset": False})
    assert obs["log/success"] == 1.0
    head = env.physics.bind(env.walker.head).xpos[:2]
    scored = float(np.hypot(*(head - reached)))  # distance to the target it reached, ~0
    assert obs["log/distance"] > 0.05  # while the observation shows the respawned one
    penalty = 1.0 * (1.0 - obs["log/upright"]) / 2.0
    # Progress counts from where the target was put (distance 0, potential 1) to `scored`.
    expected = 10.0 + 10.0 * (_potential(scored) - 1.0) - penalty
    np.testing.assert_allclose(obs["reward"], expected, atol=1e-4)
    env.close()


def test_progress_reward_is_a_difference_of_potentials_and_hovering_earns_nothing():
    env = _env("ball_goto", **{"task_kwargs.level": 0})
    env.step({"reset": True})
    scale = _task(env).distance_scale  # the ball preset's 0.1
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    head = np.array(env.physics.bind(env.walker.head).xpos[:2])
    target = head + [0.06, 0.0]  # straight ahead (the ball spawns facing +x), just outside the 0.05 m radius
    _task(env).set_target(env.physics, target)
    for _ in range(5):  # holding still next to the target
        obs = env.step({"action": zero, "reset": False})
        assert abs(obs["reward"]) < 1e-3 and obs["log/success"] == 0
    before = obs["log/distance"]
    roll = np.zeros_like(zero)
    roll[0] = 1.0  # roll forward, towards the target straight ahead
    total = 0.0
    for _ in range(10):
        obs = env.step({"action": roll, "reset": False})
        total += obs["reward"]
        if obs["log/success"]:
            break
    assert obs["log/success"] == 1.0
    scored = float(np.hypot(*(env.physics.bind(env.walker.head).xpos[:2] - target)))
    # Ten times the potential gained up to the success step, plus the bonus of 10 (the ball cannot tip).
    expected = 10.0 * (_potential(scored, scale) - _potential(before, scale)) + 10.0
    np.testing.assert_allclose(total, expected, atol=1e-3)
    env.close()


def test_rodent_on_its_back_earns_the_posture_penalty():
    env = _env("rodent_goto")
    env.step({"reset": True})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    upright = env.step({"action": zero, "reset": False})
    assert upright["log/upright"] > 0.9
    assert abs(upright["reward"]) < 0.05  # standing still: no progress, penalty ~0 when upright
    # Flip the rat onto its back (180 degrees about its long axis), above the floor.
    walker, physics = env.walker, env.physics
    walker.set_pose(physics, position=[0.0, 0.0, 0.12], quaternion=[0.0, 1.0, 0.0, 0.0])
    walker.set_velocity(physics, velocity=np.zeros(3), angular_velocity=np.zeros(3))
    flipped = env.step({"action": zero, "reset": False})
    assert flipped["log/upright"] < -0.8
    penalty = 1.0 * (1.0 - flipped["log/upright"]) / 2.0
    progress = 10.0 * (_potential(flipped["log/distance"]) - _potential(upright["log/distance"]))
    np.testing.assert_allclose(flipped["reward"], progress - penalty, atol=1e-4)
    assert flipped["reward"] < upright["reward"] - 0.8
    # The vestibular world z-axis says "upside down" too.
    assert flipped["vestibular"][11] < -0.8
    env.close()


def test_posture_free_tilt_charges_only_beyond_the_tilt():
    """posture_free_tilt 90: a rat on its side pays nothing, on its back the full weight times how far past."""
    env = _env("rodent_goto", **{"task_kwargs.posture_free_tilt": 90.0, "task_kwargs.posture_weight": 0.5,
                                 "task_kwargs.progress_weight": 0.0})
    env.step({"reset": True})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    walker, physics = env.walker, env.physics
    rewards = {}
    for name, quaternion in [("side", [np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0]), ("back", [0.0, 1.0, 0.0, 0.0])]:
        walker.set_pose(physics, position=[0.0, 0.0, 0.12], quaternion=quaternion)
        walker.set_velocity(physics, velocity=np.zeros(3), angular_velocity=np.zeros(3))
        obs = env.step({"action": zero, "reset": False})
        rewards[name] = (obs["reward"], obs["log/upright"])
    side_reward, side_up = rewards["side"]
    back_reward, back_up = rewards["back"]
    assert back_up < -0.8 and abs(side_up) < 0.3
    np.testing.assert_allclose(back_reward, -0.5 * max(0.0, -back_up), atol=1e-4)
    np.testing.assert_allclose(side_reward, -0.5 * max(0.0, -side_up), atol=1e-4)
    assert side_reward > back_reward + 0.35
    env.close()


def test_posture_free_tilt_out_of_range_is_a_config_error():
    with pytest.raises(base.TaskConfigError, match="posture_free_tilt"):
        _env("rodent_goto", **{"task_kwargs.posture_free_tilt": 180.0})


def test_body_contacts_do_not_end_the_episode():
    env = _env("rodent_goto", **{"env.time_limit": 2.0})
    env.step({"reset": True})
    rng = np.random.default_rng(0)
    lasts = []
    for _ in range(100):
        obs = env.step({"action": rng.uniform(-1, 1, env.act_space["action"].shape).astype(np.float32),
                        "reset": False})
        lasts.append(bool(obs["is_last"]))
    assert lasts == [False] * 99 + [True]  # only the 2 s time limit ends it
    assert not obs["is_terminal"]
    env.close()


def test_target_observation_is_egocentric_in_success_radii():
    env = _env("ball_goto")
    radius = _task(env).success_radius
    env.step({"reset": True})
    physics, walker = env.physics, env.walker
    for yaw in (0.0, 1.0, -2.5):
        walker.set_pose(physics, quaternion=[np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])
        physics.forward()
        head = physics.bind(walker.head).xpos
        _task(env).set_target(physics, head[:2] + 0.4 * np.array([np.cos(yaw), np.sin(yaw)]))
        target = _task(env).target_observable(physics)
        np.testing.assert_allclose(target[:2] * radius, [0.4, 0.0], atol=1e-6)
        assert np.linalg.norm(target[:2]) > 1.0  # 0.4 m is far outside the success radius
    env.close()


def test_curriculum_unit():
    cur = base.Curriculum([0.1, 0.2, 0.4], threshold=0.5, window=2)
    assert cur.level == 0 and cur.value == 0.1
    cur.record(False)
    cur.record(False)
    assert cur.level == 0  # 0% success
    cur.record(True)
    assert cur.level == 1  # window [False, True]: 50% >= threshold
    cur.record(True)
    assert cur.level == 1  # window restarted at the new level: 1 episode only
    cur.record(True)
    assert cur.level == 2
    for _ in range(5):
        cur.record(True)
    assert cur.level == 2  # top level
    restored = base.Curriculum([0.1, 0.2, 0.4], threshold=0.5, window=2)
    restored.load_state_dict(cur.state_dict())
    assert restored.level == 2 and restored.state_dict() == cur.state_dict()
    pinned = base.Curriculum([0.1, 0.2, 0.4], threshold=0.5, window=2, pinned=1)
    for _ in range(5):
        pinned.record(True)
    assert pinned.level == 1
    with pytest.raises(ValueError, match="level 3 is out of range"):
        base.Curriculum([0.1, 0.2, 0.4], threshold=0.5, window=2, pinned=3)
    with pytest.raises(ValueError, match="does not fit the 3 configured levels"):
        restored.load_state_dict({"level": 7})


def test_curriculum_advances_in_the_env_and_survives_save_restore():
    flags = {"env.time_limit": 0.1, "task_kwargs.curriculum_window": 2, "task_kwargs.curriculum_threshold": 0.5,
             "task_kwargs.curriculum_easy_fraction": 0.0}  # every episode at the current level (no easy ones)
    env = _env("ball_goto", **flags)
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    obs = env.step({"reset": True})
    assert obs["log/curriculum_level"] == 0
    levels = []
    for _ in range(2):  # two successful episodes: the target is put at the head
        head = env.physics.bind(env.walker.head).xpos
        _task(env).set_target(env.physics, head[:2])
        obs = env.step({"action": zero, "reset": False})
        assert obs["log/success"] == 1
        while not obs["is_last"]:
            obs = env.step({"action": zero, "reset": False})
        obs = env.step({"action": zero, "reset": False})  # the next episode's first step
        levels.append(obs["log/curriculum_level"])
    assert levels == [0, 1]
    # Targets of the new level are drawn up to its distance.
    assert obs["log/curriculum_distance"] == pytest.approx(0.3)
    state = env.curriculum_state()
    env.close()

    fresh = _env("ball_goto", **flags)
    assert fresh.step({"reset": True})["log/curriculum_level"] == 0
    fresh.load_curriculum_state(state)
    assert fresh.step({"reset": True})["log/curriculum_level"] == 1
    # Restored before the first step (a resumed run): the first episode is drawn at the restored level.
    resumed = _env("ball_goto", **{**flags, "task_kwargs.curriculum_levels": [0.1, 5.0]})
    resumed.load_curriculum_state({"level": 1, "recent": []})
    obs = resumed.step({"action": zero, "reset": False})
    assert obs["is_first"] and obs["log/curriculum_level"] == 1
    assert obs["log/distance"] > 0.1  # level 0 would put the target within 0.1 m
    resumed.close()
    assert fresh.curriculum_state()["level"] == 1
    fresh.close()


def test_pinned_level_sets_the_target_distance():
    env = _env("ball_goto", **{"task_kwargs.level": 4})
    for _ in range(3):
        obs = env.step({"reset": True})
        assert obs["log/curriculum_level"] == 4
        assert 0.075 <= obs["log/distance"] <= 1.2 + 1e-6
    env.close()


# ---- reach rate and time to first reach ----


def _place_at_head(env):
    _task(env).set_target(env.physics, env.physics.bind(env.walker.head).xpos[:2])


def test_reach_rate_and_time_to_first_reach_of_a_scripted_episode():
    """3 targets in a 1 s episode (the ball held still, each target put at its head): 180 per minute, the first
    reached at the end of control step 10 (0.2 s); the driver's episode record keeps the episode's values."""
    import math

    from dreamer_rodent.driver import Episodes
    from dreamer_rodent.logger import Averages

    env = _env("ball_goto", **{"env.time_limit": 1.0, "task_kwargs.level": 0})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    episodes = Episodes(1)
    obs = env.step({"reset": True})
    assert obs["log/targets_per_min"] == 0.0 and math.isnan(obs["log/first_reach_s"])
    records, step = [], 0
    while True:
        records += episodes.add({k: np.asarray(v)[None] for k, v in obs.items()})
        if obs["is_last"]:
            break
        if step in (9, 19, 29):  # reached at the end of steps 10, 20 and 30
            _place_at_head(env)
        obs = env.step({"action": zero, "reset": False})
        step += 1
        if step == 10:
            assert obs["log/success"] == 1.0 and obs["log/first_reach_s"] == pytest.approx(0.2)
            assert obs["log/targets_per_min"] == pytest.approx(60.0 / 0.2)  # 1 target in 0.2 s so far
    assert step == 50 and obs["log/targets_reached"] == 3.0
    (record,) = records
    assert record["targets_reached"] == 3.0
    assert record["targets_per_min"] == pytest.approx(180.0)
    assert record["first_reach_s"] == pytest.approx(0.2)

    # An episode with no reach (held still, the target 7.5 cm or more away): rate 0, no time to first reach,
    # and the NaN stays out of the logged means (train.py averages episode/... keys with logger.Averages).
    obs = env.step({"action": zero, "reset": False})
    records = []
    while not records:
        records += episodes.add({k: np.asarray(v)[None] for k, v in obs.items()})
        obs = env.step({"action": zero, "reset": False})
    assert records[0]["targets_per_min"] == 0.0 and math.isnan(records[0]["first_reach_s"])
    averages = Averages()
    averages.add({"episode/first_reach_s": record["first_reach_s"]})
    averages.add({"episode/first_reach_s": records[0]["first_reach_s"]})
    assert averages.result() == {"episode/first_reach_s": pytest.approx(0.2)}
    env.close()


def test_reach_rate_counts_simulated_time_with_action_repeat():
    """With action repeat 2 an env step is 40 ms: one target in a 1 s episode is 60 per minute. The reach happens
    on the first of the two physics steps, and the env step still reports it as a success."""
    env = _env("ball_goto", **{"env.time_limit": 1.0, "env.action_repeat": 2, "task_kwargs.level": 0})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    obs = env.step({"reset": True})
    steps, successes = 0, []
    while not obs["is_last"]:
        if steps == 4:
            _place_at_head(env)  # reached on the first control step of env step 5: control step 9
        obs = env.step({"action": zero, "reset": False})
        steps += 1
        successes.append(float(obs["log/success"]))
    assert successes[4] == 1.0 and sum(successes) == 1.0
    assert steps == 25 and obs["log/targets_reached"] == 1.0
    assert obs["log/targets_per_min"] == pytest.approx(60.0)
    assert obs["log/first_reach_s"] == pytest.approx(9 * 0.02)
    env.close()


def test_eval_scores_have_the_reach_rate_and_null_for_no_reach():
    """dreamer_rodent.eval's rollout: per-episode targets_per_min and first_reach_s, strict JSON (null, not NaN)."""
    import json

    from dreamer_rodent import overlay, rollout
    from dreamer_rodent import scores as scores_lib

    env = _env("ball_goto", **{"env.time_limit": 1.0, "task_kwargs.level": 0})
    zero = np.zeros(env.act_space["action"].shape, np.float32)

    def place(episode, obs, step):
        if episode.index == 0 and step in (9, 19):
            _place_at_head(env)

    episodes = rollout.run_episodes(env, lambda carry, obs: (carry, zero), lambda: None, 2, place)
    env.close()
    scores = scores_lib.summarize(episodes)
    first, second = scores["per_episode"]
    assert first["targets_reached"] == 2 and first["targets_per_min"] == pytest.approx(120.0)
    assert first["first_reach_s"] == pytest.approx(0.2)
    assert second["targets_per_min"] == 0.0 and second["first_reach_s"] is None
    assert scores["targets_per_min"]["mean"] == pytest.approx(60.0)
    assert scores["first_reach_s"] == pytest.approx({"mean": 0.2, "std": 0.0, "min": 0.2, "max": 0.2})
    text = json.dumps(scores_lib.strict_json(scores), allow_nan=False)
    assert json.loads(text)["per_episode"][1]["first_reach_s"] is None
    assert json.loads(json.dumps(scores_lib.strict_json({"x": [float("nan"), np.float32(1.5)]}))) == {"x": [None, 1.5]}
    lines = overlay.frame_text(episodes[0], 2, {"reward": 0.0}, 50)
    assert "120.0 targets/min  first at 0.2 s" in lines
    assert "per min" in scores_lib.format_table(scores)


# ---- the two-way curriculum (pure logic) ----


def _two_way(**kw):
    kw = {"threshold": 0.7, "window": 4, "down_threshold": 0.3, **kw}
    return base.Curriculum([0.1, 0.2, 0.4, 0.8], **kw)


def test_curriculum_goes_down_below_the_down_threshold_and_clears_the_window():
    cur = _two_way()
    cur.load_state_dict({"level": 2, "recent": []})
    for _ in range(3):
        cur.record(False)
    assert cur.level == 2  # the window is not full yet
    cur.record(False)
    assert cur.level == 1 and cur.state_dict()["recent"] == []  # 0 < 0.3: down, window cleared
    for success in (True, False, True):
        cur.record(success)
    assert cur.level == 1
    cur.record(False)
    assert cur.level == 1  # [T, F, T, F] = 0.5: between the thresholds, stays
    cur.record(False)
    assert cur.level == 0  # the window slides to [F, T, F, F] = 0.25 < 0.3: down
    for success in (False, False):
        cur.record(success)
    assert cur.level == 0
    for _ in range(10):
        cur.record(False)
    assert cur.level == 0  # never below level 0
    for _ in range(4):
        cur.record(True)
    assert cur.level == 1  # and up again on success
    with pytest.raises(ValueError, match="curriculum_down_threshold must be in"):
        _two_way(down_threshold=0.7)
    with pytest.raises(ValueError, match="curriculum_easy_fraction must be in"):
        _two_way(easy_fraction=1.0)
    never = _two_way(down_threshold=0.0)  # 0: the level only goes up
    never.load_state_dict({"level": 2, "recent": []})
    for _ in range(20):
        never.record(False)
    assert never.level == 2


def test_curriculum_easy_episodes_come_from_easier_levels_and_do_not_count():
    rng = np.random.RandomState(0)
    cur = _two_way(easy_fraction=0.2)
    assert {cur.draw_level(rng) for _ in range(200)} == {0}  # level 0 has no easier level
    cur.load_state_dict({"level": 3, "recent": []})
    draws = np.array([cur.draw_level(rng) for _ in range(6000)])
    assert np.mean(draws < 3) == pytest.approx(0.2, abs=0.02)
    easy = draws[draws < 3]
    assert set(easy) == {0, 1, 2} and np.bincount(easy).min() > 0.28 * len(easy)  # uniform over the easier levels
    for _ in range(10):
        cur.record(False, level=1)  # easy episodes: not in the window of level 3
    assert cur.level == 3 and cur.state_dict()["recent"] == []
    cur.record(True, level=3)
    assert cur.state_dict()["recent"] == [1.0]
    pinned = _two_way(easy_fraction=0.5, pinned=2)
    assert {pinned.draw_level(rng) for _ in range(100)} == {2}  # evaluation: always the pinned level
    off = _two_way(easy_fraction=0.5, enabled=False)
    assert {off.draw_level(rng) for _ in range(100)} == {3}  # curriculum off: the farthest level


def _simulate(cur, success_at, episodes, seed=0):
    """Runs `episodes` episodes; success_at(level) -> success probability. Returns (current, episode) levels."""
    rng = np.random.RandomState(seed)
    history = []
    for _ in range(episodes):
        current = cur.level
        level = cur.draw_level(rng)
        history.append((current, level))
        cur.record(rng.uniform() < success_at(level), level)
    return history


def _changes(history):
    """Indices of episodes after which the curriculum level changed, and the episodes at the level before each."""
    changes = [i for i in range(1, len(history)) if history[i][0] != history[i - 1][0]]
    held = []
    for start, end in zip([0] + changes, changes):
        held.append(sum(1 for current, level in history[start:end] if level == current))
    return changes, held


def test_curriculum_does_not_oscillate_every_few_episodes():
    """An agent that masters levels 0-1 and always fails level 2 moves 1 -> 2 -> 1 -> ... but holds every level for
    a full window of its own episodes (easy episodes come on top); one between the thresholds never moves."""
    window = 20
    cur = base.Curriculum([0.15, 0.3, 0.5, 0.8], threshold=0.7, window=window, down_threshold=0.3,
                          easy_fraction=0.2)
    history = _simulate(cur, lambda level: 1.0 if level <= 1 else 0.0, 1000)
    changes, held = _changes(history)
    assert [history[i][0] for i in changes[:4]] == [1, 2, 1, 2]
    assert all(h == window for h in held)  # each change after exactly one full window at the level
    assert min(np.diff(changes)) >= window and len(changes) <= 1000 // window
    easy = [(current, level) for current, level in history if level != current]
    assert easy and all(level < current for current, level in easy)

    # Noisy success near the thresholds: changes stay at least a window of episodes apart.
    for seed, rates in enumerate(([0.9, 0.75, 0.5, 0.2], [0.8, 0.6, 0.35, 0.25], [0.7, 0.7, 0.3, 0.3])):
        cur = base.Curriculum([0.15, 0.3, 0.5, 0.8], threshold=0.7, window=window, down_threshold=0.3,
                              easy_fraction=0.2)
        changes, held = _changes(_simulate(cur, lambda level: rates[level], 3000, seed=seed))
        assert all(h >= window for h in held) and (not changes[1:] or min(np.diff(changes)) >= window), rates

    # Success half the time at every level: the first window moves nothing, nor does any later one.
    cur = base.Curriculum([0.15, 0.3], threshold=0.7, window=4, down_threshold=0.3)
    cur.load_state_dict({"level": 1, "recent": []})
    for i in range(400):
        cur.record(i % 2 == 0)
    assert cur.level == 1


def test_two_way_curriculum_state_survives_restore():
    cur = _two_way(easy_fraction=0.2)
    cur.load_state_dict({"level": 2, "recent": []})
    for _ in range(4):
        cur.record(False)  # down to 1
    cur.record(True)
    cur.record(False)
    state = cur.state_dict()
    assert state == {"level": 1, "recent": [1.0, 0.0], "levels": [0.1, 0.2, 0.4, 0.8]}
    restored = _two_way(easy_fraction=0.2)
    restored.load_state_dict(state)
    assert restored.level == 1 and restored.state_dict() == state
    cur.record(False)
    restored.record(False)
    assert cur.level == restored.level == 1  # 3 episodes in the window: not full
    cur.record(False)
    restored.record(False)
    assert cur.level == restored.level == 0  # [T, F, F, F] = 0.25 < 0.3: both go down at the same episode


def test_curriculum_steps_down_in_the_env_and_logs_each_episodes_level():
    """Held still, the ball reaches no target: from level 3 the curriculum steps down a level per 2 failed
    episodes at the current level (window 2); easy episodes are drawn nearer, logged, and do not count."""
    flags = {"env.time_limit": 0.1, "task_kwargs.curriculum_window": 2, "task_kwargs.curriculum_threshold": 0.5,
             "task_kwargs.curriculum_down_threshold": 0.3, "task_kwargs.curriculum_easy_fraction": 0.5}
    env = _env("ball_goto", **flags)
    levels = list(_task(env).curriculum.levels)
    env.load_curriculum_state({"level": 3, "recent": []})
    zero = np.zeros(env.act_space["action"].shape, np.float32)
    obs = env.step({"action": zero, "reset": False})  # the first episode, drawn at the restored level
    history = []  # (current level, episode level, easy) of each episode, from its last observation
    while len(history) < 40 and not (history and history[-1][0] == 0 and len(history) > 12):
        assert obs["is_first"]
        episode_level = int(obs["log/curriculum_episode_level"])
        assert obs["log/distance"] <= levels[episode_level] + 1e-6  # the target is drawn at the episode's level
        while not obs["is_last"]:
            obs = env.step({"action": zero, "reset": False})
        assert obs["log/targets_reached"] == 0
        history.append((int(obs["log/curriculum_level"]), int(obs["log/curriculum_episode_level"]),
                        bool(obs["log/curriculum_easy"])))
        obs = env.step({"action": zero, "reset": False})
    currents = [c for c, _, _ in history]
    assert currents[0] == 3 and currents[-1] == 0 and currents == sorted(currents, reverse=True)
    for level in (3, 2, 1):  # each left after exactly 2 of its own (not easy) episodes
        assert sum(1 for c, e, easy in history if c == level and not easy) == 2
    assert all(easy == (e < c) for c, e, easy in history)
    assert any(easy for _, _, easy in history) and not any(easy for c, _, easy in history if c == 0)
    assert env.curriculum_state()["level"] == 0
    env.close()


def test_rodent_goto_preset_steps_physics_at_2ms_and_the_control_step_stays_20ms():
    """env.physics_timestep sets MuJoCo's step only: the agent still acts every 20 ms (x action repeat)."""
    from dreamer_rodent.config import task_preset

    config = build_config(task_preset("rodent_goto", []) + ["proprio_only"], flags={"task": "rodent_goto"})
    assert config.env.physics_timestep == 0.002
    env = make_env(config)
    task = _task(env)
    assert env._env.physics.model.opt.timestep == pytest.approx(0.002)
    assert task.control_timestep == pytest.approx(0.02)
    assert task.physics_steps_per_control_step == 10
    env.step({"action": np.zeros(38, np.float32), "reset": True})
    env.step({"action": np.zeros(38, np.float32)})
    assert env._env.physics.data.time == pytest.approx(2 * 0.02)  # action repeat 2 of 20 ms control steps
    own = make_env(build_config(task_preset("rodent_goto", []) + ["proprio_only"],
                                flags={"task": "rodent_goto", "env.physics_timestep": 0.0}))
    assert own._env.physics.model.opt.timestep == pytest.approx(0.001)  # 0: the walker's own


def test_a_physics_timestep_that_does_not_divide_the_control_step_is_refused():
    with pytest.raises(base.TaskConfigError, match=r"env.physics_timestep is 0.003 s.*0.0025, 0.002, 0.001"):
        _env("ball_goto", **{"env.physics_timestep": 0.003})
    with pytest.raises(base.TaskConfigError, match="env.physics_timestep"):
        _env("rodent_goto", **{"env.physics_timestep": 0.04})
