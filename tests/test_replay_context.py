"""replay.context: rows start from the stored latent of the step before them, refreshed after each update."""

import jax
import numpy as np

from dreamer_rodent.agent import Agent
from dreamer_rodent.agent.nets import Nets
from dreamer_rodent.config import build_config
from test_agent import FLAGS, make_batch, spaces


def test_a_row_started_from_the_stored_latent_continues_the_full_sequence():
    obs_space, act_space = spaces(image=False)
    agent = Agent(obs_space, act_space, build_config(["debug"], FLAGS))
    batch = agent._train_batch(make_batch(obs_space, t=12))
    params = agent._state["params"]
    obs = {k: batch[k] for k in agent.keys + ["is_first"]}
    embed = agent._apply(params, Nets.encode, obs)
    action = np.asarray(batch["action"])
    prev = np.concatenate([np.zeros_like(action[:, :1]), action[:, :-1]], 1)
    deter, stoch, logits = agent._observe(params, embed, batch["is_first"], prev, agent._zero_carry(4),
                                          jax.random.PRNGKey(0))
    k = 5  # the context step; rows 0, 2, 3 have no episode start at k + 1 (row 1's is at 8)
    record = agent.latent_record({"deter": deter[:, k], "stoch": stoch[:, k]})
    assert record["latent/deter"].dtype == np.float16 and record["latent/stoch"].dtype == np.uint8
    context = dict(record, action=action[:, k])
    carry = agent._context_carry(context)
    _, _, resumed = agent._observe(params, embed[:, k + 1:], batch["is_first"][:, k + 1:], prev[:, k + 1:], carry,
                                   jax.random.PRNGKey(1))
    np.testing.assert_allclose(resumed[:, 0], logits[:, k + 1], atol=2e-2)  # float16 deter in the replay
    _, _, blank = agent._observe(params, embed[:, k + 1:], batch["is_first"][:, k + 1:], prev[:, k + 1:],
                                 agent._zero_carry(4), jax.random.PRNGKey(1))
    assert np.abs(np.asarray(blank[:, 0]) - np.asarray(logits[:, k + 1])).max() > 10 * 2e-2  # a blank start differs
    # A blank record (the random prefill) is the zero latent.
    blank_carry = agent._context_carry(dict(agent.latent_record(size=4), action=action[:, k]))
    assert all(float(np.abs(v).max()) == 0.0 for v in jax.tree.leaves(blank_carry))


def test_training_with_replay_context_stores_and_refreshes_latents(tmp_path):
    from dreamer_rodent import distributed
    from dreamer_rodent.config import parse_args
    from dreamer_rodent.train import Trainer, main

    rundir = tmp_path / "run"
    args = ["--task", "ball_goto", "--configs", "debug", "--env.time_limit", "1.0", "--run.progress", "false",
            "--logdir", str(rundir), "--run.steps", "200", "--run.env_parallel", "none", "--replay.context", "true"]
    assert main(args) == 0
    config, _ = parse_args(args)
    trainer = Trainer(config.update({"logdir": str(rundir)}), rundir, distributed.make_mesh(config),
                      resume_from=rundir, say=lambda *a: None)
    try:
        replay = trainer.replay
        assert replay.length == int(config.batch_length) + 1  # each row brings the step before it
        chunk = replay._streams[0][0]
        valid = chunk.data["latent/valid"][:chunk.size]
        prefill = int(config.run.prefill) // len(trainer.envs)
        # Steps of the random prefill were stored blank; updates refreshed the ones they trained on.
        assert valid[:prefill].any() and valid[prefill:].mean() > 0.5
        deter = chunk.data["latent/deter"][:chunk.size][valid]
        assert np.isfinite(deter.astype(np.float32)).all() and np.abs(deter).max() > 0
    finally:
        trainer.close()
