"""Environments shipped with ngrl, registered with gymnasium under ``ngrl/`` ids on import."""

from gymnasium.envs.registration import register

register(id="ngrl/CartPoleNoVel-v1", entry_point="envs.cartpole_novel:CartPoleNoVelEnv", max_episode_steps=500, reward_threshold=475.0)
register(id="ngrl/CueCorridor-v0", entry_point="envs.cue_corridor:CueCorridorEnv", kwargs={"delay": 10})
