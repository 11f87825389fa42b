"""DreamerV3 agent (our implementation from the papers).

    agent = Agent(obs_space, act_space, config, mesh=None)
    carry = agent.init_policy(B); carry, act = agent.policy(carry, obs, mode="train"|"eval")
    carry, act = agent.policy(carry, obs, mode, record=True)  # + act["internals"] (eval --record)
    tcarry = agent.init_train(B); tcarry, metrics = agent.train(tcarry, batch)
    metrics = agent.report(batch); arrays = agent.save(); agent.load(arrays); agent.param_count()

Keys read: the encoder keys present in obs_space (`agent.image_keys`,
`vestibular_keys`, `proprio_keys`, `task_keys`; the chosen list is
`agent.keys`, others are listed in `agent.ignored_keys`), plus `is_first` for
`policy`, and `reward`, `is_first`, `is_last`, `is_terminal`, `action` for
`train` and `report`. `log/` keys and any other key are ignored; build the
config with `with_task_keys(config, obs_space)` so that every task key the env
emits (`origin`, `task_state`, ...) reaches the task encoder.

Action alignment: batch["action"][:, t] is the action the policy chose after
seeing obs t. The model's transition into obs t uses action t-1 (zeros at t=0
of a batch and after is_first). reward[:, t] is the reward that came with obs t.
"""

from dreamer_rodent.agent.agent import Agent, count_params, with_task_keys

__all__ = ["Agent", "count_params", "with_task_keys"]
