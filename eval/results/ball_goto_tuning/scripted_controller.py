# Sanity check that ball_goto level 0 (5 s episodes) is solvable: a proportional controller
# (steer toward the egocentric target, roll forward). Run: python scripted_controller.py 1 1
# -> "success 1.0" over 10 episodes (2026-11-21, 2-core CPU); with the roll sign flipped (2 -1): 0.0.
import numpy as np, sys
from dreamer_rodent.config import parse_args
from dreamer_rodent.parallel import BatchEnv
config,_ = parse_args(['--task','ball_goto','--configs','proprio_only','--run.envs','1','--run.env_parallel','none','--env.time_limit','5','--task_kwargs.level','0'])
env = BatchEnv(config, parallel='none')
print({k:v.shape for k,v in env.obs_space.items()}, env.act_space)
kp_s, kp_r = float(sys.argv[1]), float(sys.argv[2])
acts={'action':np.zeros((1,3),np.float32),'reset':np.ones(1,bool)}
obs=env.step(acts); succ=[]; got=0; eps=0; t=0
while eps<10:
    tgt=obs['target'][0]
    ang=np.arctan2(tgt[1],tgt[0])
    a=np.array([[np.clip(kp_r*np.cos(ang)*np.hypot(tgt[0],tgt[1])*10,-1,1), np.clip(kp_s*ang,-1,1), 0]],np.float32)
    if t<3: print(tgt, ang)
    t+=1
    obs=env.step({'action':a,'reset':obs['is_last'].copy()})
    got=max(got,obs['log/success'][0])
    if obs['is_last'][0]:
        succ.append(got); got=0; eps+=1
print('success', np.mean(succ), obs['log/targets_reached'])
