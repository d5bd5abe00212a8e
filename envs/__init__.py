"""Environments shipped with ngrl, registered with gymnasium under ``ngrl/`` ids on import."""

from gymnasium.envs.registration import register

register(id="ngrl/CartPoleNoVel-v1", entry_point="envs.cartpole_novel:CartPoleNoVelEnv", max_episode_steps=500, reward_threshold=475.0)
register(id="ngrl/CueCorridor-v0", entry_point="envs.cue_corridor:CueCorridorEnv", kwargs={"delay": 10})

# Meta-RL task families (sample_tasks / set_task / get_task).
import importlib.util  # noqa: E402

from envs.task_family import ParameterTaskFamily, TaskFamily, TaskResampling, task_family_methods  # noqa: E402

register(id="ngrl/Navigation2D-v0", entry_point="envs.navigation:Navigation2DEnv", max_episode_steps=100)
register(id="ngrl/CartPoleDynamics-v0", entry_point="envs.dynamics:make_cartpole_dynamics", max_episode_steps=500)
register(id="ngrl/PendulumDynamics-v0", entry_point="envs.dynamics:make_pendulum_dynamics", max_episode_steps=200)
register(id="ngrl/TargetBandit-v0", entry_point="envs.bandit:TargetBanditEnv")  # one-step episodes
if importlib.util.find_spec("mujoco") is not None:  # optional extra: gymnasium[mujoco]
    register(id="ngrl/HalfCheetahVel-v0", entry_point="envs.locomotion:HalfCheetahVelEnv", max_episode_steps=200)
