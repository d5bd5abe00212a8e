"""Environments shipped with ngrl, registered with gymnasium under ``ngrl/`` ids on import."""

from gymnasium.envs.registration import register

register(id="ngrl/CartPoleNoVel-v1", entry_point="envs.cartpole_novel:CartPoleNoVelEnv", max_episode_steps=500, reward_threshold=475.0)
register(id="ngrl/CueCorridor-v0", entry_point="envs.cue_corridor:CueCorridorEnv", kwargs={"delay": 10})
# The zoo's other *NoVel tasks (velocities removed; the base env keeps its own time limit). LunarLander needs box2d.
for _base in ("Pendulum-v1", "MountainCar-v0", "MountainCarContinuous-v0", "LunarLander-v3", "LunarLanderContinuous-v3"):
    _name, _, _version = _base.partition("-v")
    register(id=f"ngrl/{_name}NoVel-v{_version}", entry_point="envs.no_velocity:make_no_velocity", kwargs={"env_id": _base})
del _base, _name, _version

# Meta-RL task families (sample_tasks / set_task / get_task).
import importlib.util  # noqa: E402

from envs.task_family import ParameterTaskFamily, TaskFamily, TaskResampling, task_family_methods  # noqa: E402

register(id="ngrl/Navigation2D-v0", entry_point="envs.navigation:Navigation2DEnv", max_episode_steps=100)
register(id="ngrl/CartPoleDynamics-v0", entry_point="envs.dynamics:make_cartpole_dynamics", max_episode_steps=500)
register(id="ngrl/PendulumDynamics-v0", entry_point="envs.dynamics:make_pendulum_dynamics", max_episode_steps=200)
register(id="ngrl/TargetBandit-v0", entry_point="envs.bandit:TargetBanditEnv")  # one-step episodes
# RL² trials of any family: gym.make("ngrl/Trial-v0", family="ngrl/TargetBandit-v0", episodes_per_trial=2)
register(id="ngrl/Trial-v0", entry_point="envs.trial:TrialEnv")
# Families whose tasks have opposite optimal actions (the task is not observed). One memoryless policy does well on
# every CartPoleActuator task all the same (README "Meta-RL"); on the others none does.
register(id="ngrl/LineGoal-v0", entry_point="envs.line_goal:make_line_goal", max_episode_steps=30)
register(id="ngrl/CartPoleActuator-v0", entry_point="envs.cartpole_actuator:make_cartpole_actuator", max_episode_steps=500)
register(id="ngrl/PendulumActuator-v0", entry_point="envs.pendulum_actuator:make_pendulum_actuator", max_episode_steps=200)
register(id="ngrl/Navigation2DAxes-v0", entry_point="envs.navigation_axes:make_navigation_axes", max_episode_steps=50)
if importlib.util.find_spec("mujoco") is not None:  # optional extra: gymnasium[mujoco]
    register(id="ngrl/HalfCheetahVel-v0", entry_point="envs.locomotion:HalfCheetahVelEnv", max_episode_steps=200)
