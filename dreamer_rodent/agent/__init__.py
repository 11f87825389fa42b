"""DreamerV3 agent (our implementation from the papers).

    agent = Agent(obs_space, act_space, config, mesh=None)
    carry = agent.init_policy(B); carry, act = agent.policy(carry, obs, mode="train"|"eval")
    tcarry = agent.init_train(B); tcarry, metrics = agent.train(tcarry, batch)
    metrics = agent.report(batch); arrays = agent.save(); agent.load(arrays); agent.param_count()

batch["action"][:, t] is the action the policy chose after seeing obs t; the
model transition into obs t uses action t-1 (zeros at t=0 or after is_first).
"""

from dreamer_rodent.agent.agent import Agent, count_params

__all__ = ["Agent", "count_params"]
