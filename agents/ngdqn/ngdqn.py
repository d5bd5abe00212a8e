"""Natural-gradient deep Q-learning (Knight & Lerner 2018): DQN whose step solves (G + dI) x = ∇L_TD."""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, ReplayBufferSamples, Schedule
from stable_baselines3.dqn import DQN
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork

from agents.arguments import check_arguments, check_spaces
from agents.common import CheckpointMixin
from agents.ngdqn.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from ngrl import CGConfig, flatten, natural_step, unflatten
from ngrl.damping import levenberg_marquardt, reduction_ratio
from ngrl.fisher import AdaptiveConfig, AdaptiveFisher, GaussNewtonOperator, gauss_newton, layer_blocks

__all__ = ["NGDQN"]

SelfNGDQN = TypeVar("SelfNGDQN", bound="NGDQN")



class StepStats(NamedTuple):
    """What one natural-gradient step measured (tensors stay on the device until logging)."""

    td_loss: Tensor
    cg_iterations: int
    cg_residual: float
    step_size: float
    damping: float
    reduction_ratio: float
    adaptive_epsilon: float = math.nan  # the smallest ε the adaptive estimate's step used (curvature="adaptive")


def _parse_damping(damping: float | str) -> tuple[bool, float]:
    """``0.1`` → fixed d = 0.1; ``"adaptive"`` → Levenberg–Marquardt from d = 1; ``"adaptive_0.1"`` → from d = 0.1."""
    if isinstance(damping, str):
        if damping == "adaptive":
            return True, 1.0
        if damping.startswith("adaptive_"):
            try:
                initial = float(damping[len("adaptive_") :])
            except ValueError:
                initial = float("nan")
            if initial > 0 and math.isfinite(initial):
                return True, initial
        raise ValueError(
            f"damping must be a non-negative number, 'adaptive' or 'adaptive_<initial value>' (e.g. 'adaptive_0.1'), got {damping!r}"
        )
    damping = float(damping)
    if not damping >= 0 or not math.isfinite(damping):
        raise ValueError(f"a fixed damping must be a finite number >= 0, got {damping}")
    return False, damping


class NGDQN(CheckpointMixin, DQN):
    """
    Natural-gradient deep Q-learning (Knight & Lerner 2018, "Natural Gradient Deep Q-learning",
    arXiv:1803.07482), with DQN's replay buffer, ε-greedy exploration and interface (Mnih et al. 2015).

    The TD regression Q_θ(s, a) → y = r + γ maxₐ′ Q̄(s′, a′) is read as a Gaussian output model
    p(q | s) = N(Q_θ(s), σ²) (Knight & Lerner, §3). Its Fisher is the Gauss–Newton matrix
    G = (1/n) Σᵢ Jᵢᵀ Jᵢ / σ², Jᵢ the Jacobian of the taken action's Q-value (``curvature_outputs="action"``)
    or of the whole output vector (``"all"``). Every gradient step, on one minibatch,

        L(θ) = (1/n) Σᵢ ℓ(Q_θ(sᵢ, aᵢ) − yᵢ),   solve (G + dI) x = ∇L by ≤ ``cg_max_steps`` CG iterations,
        θ ← θ − η x

    with G never formed (one jvp and one vjp per product, ``ngrl.fisher.gauss_newton``), through
    ``ngrl.natural_step`` with a fixed rate. σ = 1: with ℓ(r) = r²/2 (``td_loss="mse"``), G is exactly
    the Gauss–Newton matrix of L; another σ would only rescale d. η follows ``learning_rate`` (a constant
    or SB3 schedule); with ``target_kl`` = δ it is capped so that the quadratic KL model of the step,
    ½η²xᵀ(G + dI)x — the damped operator the solve used, as in every natural step of ngrl — stays ≤ δ.
    The damping d is fixed or adapted by the Levenberg–Marquardt rule from the reduction ratio
    ρ = (L(θ − ηx) − L(θ)) / (−η gᵀx + ½η² xᵀGx) (the undamped model of L; Martens 2010, §4.1)
    measured on the same minibatch (``ngrl.damping``).

    The paper runs without a target network: ``target_network=False`` (the default) bootstraps y from
    the online network itself (y is held constant within a step); the TD target is the only place the
    flag is read. With ``target_network=True`` y reads DQN's target network. Either way DQN keeps its
    target copy in step every ``target_update_interval`` steps, as DQN does. Measured on CartPole-v1 (2 seeds, 50k steps, η = 0.1 and
    0.3; ``bench/results/ngdqn_tuning_*``): without a target network NGDQN reached 475 (η = 0.3: at 15k
    and 45k), with one refreshed every 500 steps it never did (best evaluation 302 over the 4 runs), so the
    default is no target network. Defaults (η = 0.6, adaptive d from 0.1, 5 CG iterations, batch 64)
    are the ones measured best on CartPole-v1 among the few tried (see ``configs/ngdqn.yml``).
    DQN's policies are used without their Adam optimizer (``agents.ngdqn.policies``).

    :param policy: the policy model ("MlpPolicy", "CnnPolicy", "MultiInputPolicy" or a DQNPolicy class)
    :param env: the environment to learn from (an env id, an env or a VecEnv)
    :param learning_rate: the natural-gradient step size η (a constant or a schedule of the remaining progress)
    :param buffer_size: size of the replay buffer
    :param learning_starts: environment steps collected before learning starts
    :param batch_size: minibatch size of each gradient step (the batch G and ∇L are estimated on)
    :param tau: Polyak coefficient of the target-network update (1: hard copy)
    :param gamma: discount factor
    :param train_freq: update every ``train_freq`` steps, or a tuple like ``(2, "episode")``
    :param gradient_steps: gradient steps per update (-1: as many as environment steps collected)
    :param replay_buffer_class: replay buffer class (None: chosen from the observation space)
    :param replay_buffer_kwargs: its keyword arguments
    :param optimize_memory_usage: memory-efficient replay buffer
    :param n_steps: n-step returns (SB3's NStepReplayBuffer) when > 1
    :param target_network: bootstrap y from DQN's target network (True) or from the online network
        (False, the paper's setting)
    :param target_update_interval: environment steps between target-network updates (as in DQN)
    :param exploration_fraction: fraction of training over which ε decays
    :param exploration_initial_eps: initial ε
    :param exploration_final_eps: final ε
    :param max_grad_norm: clip ‖∇L‖ to this before the solve (as DQN clips its gradient); None: no clipping
    :param damping: d, a fixed number ≥ 0, or ``"adaptive"`` / ``"adaptive_<d₀>"`` for Levenberg–Marquardt
        adaptation starting at d₀ (1 by default)
    :param damping_bounds: (min, max) the adaptive damping is kept in
    :param cg_max_steps: conjugate-gradient iterations per gradient step (matrix-vector products)
    :param cg_tol: relative residual at which conjugate gradient stops early
    :param solver: how (G + dI) x = ∇L is solved: ``"cg"`` (at most ``cg_max_steps`` CG iterations from
        x = 0) or ``"exact"``. ∇L lies in the span of the minibatch's Jacobian rows, so both run in the
        space of the minibatch (n × n; n·k × n·k with ``curvature_outputs="all"``), which the rows' Gram
        matrix gives from one batched backward pass (``GaussNewtonOperator.batch_space_solve``): CG takes
        there the iterates it would take in parameter space at a fraction of the cost, and the exact
        solve is one Cholesky factorisation. CG runs in parameter space instead when preconditioned or
        when that costs less (large minibatches of small networks: ``GaussNewtonOperator.batch_space_preferred``).
    :param curvature: ``"gauss_newton"`` (the minibatch's G, solved as ``solver`` says) or ``"adaptive"``:
        no solve; P ≈ (E[G] + dI)⁻¹ is the running inverse of Amari, Park & Fukumizu (2000)
        (``ngrl.fisher.AdaptiveFisher``), stepped once per minibatch, P ← (1 + ε)P − εP(G + dI)P, from the
        rows Jᵢᵀe_c of the Gaussian output model (σ = 1; c = aᵢ, or every output with ``curvature_outputs="all"``),
        whose Ŝ is exactly the minibatch's Gauss–Newton matrix G. The step is θ ← θ − η α* P∇L with
        α* = ∇LᵀP∇L / (P∇L)ᵀ(G + dI)(P∇L), the minimum of the minibatch's damped model along P∇L (as KFAC
        rescales its direction, Martens & Grosse 2015, §6.4): P averages G over many minibatches, and its
        unscaled direction overshoots the minibatch (with η = 0.6 it diverged on CartPole-v1 within a few hundred
        updates). So η keeps its meaning, and the KL cap, the Levenberg–Marquardt rule and the logged residual
        (‖∇L − (G + dI)x‖/‖∇L‖, 0 iterations) read G + dI as with CG. P is kept in the policy's state
        (saved and loaded with it)
    :param adaptive_kwargs: ``ngrl.fisher.AdaptiveConfig`` fields of the adaptive estimate (structure, epsilon,
        schedule, min_epsilon, initial_curvature, guard); None: its defaults (Kronecker-factored per layer,
        constant ε = 0.1, P₀ = I)
    :param curvature_outputs: ``"action"`` (G of the taken action's Q-value) or ``"all"`` (of all Q-values)
    :param td_loss: ``"mse"`` (½ r², the Gaussian negative log-likelihood) or ``"huber"`` (DQN's smooth L1)
    :param target_kl: bound δ on the quadratic KL model ½η²xᵀ(G + dI)x of a step (None: no bound)
    :param preconditioner: how CG is preconditioned: None (or "none") or "diagonal" (diag(G) + d)
    :param stats_window_size: episodes averaged in the rollout logs
    :param tensorboard_log: tensorboard log folder (None: no tensorboard)
    :param policy_kwargs: keyword arguments of the policy
    :param verbose: 0 silent, 1 info, 2 debug
    :param seed: random seed
    :param device: "auto", "cpu" or "cuda"
    :param _init_setup_model: build the networks at construction
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }

    def __init__(
        self,
        policy: str | type[DQNPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 0.6,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 64,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        target_network: bool = False,
        target_update_interval: int = 10000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        max_grad_norm: float | None = None,
        damping: float | str = "adaptive_0.1",
        damping_bounds: tuple[float, float] = (1e-4, 1e4),
        cg_max_steps: int = 5,
        cg_tol: float = 1e-6,
        solver: str = "cg",
        curvature: str = "gauss_newton",
        adaptive_kwargs: dict[str, Any] | None = None,
        curvature_outputs: str = "action",
        td_loss: str = "mse",
        target_kl: float | None = None,
        preconditioner: str | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        check_arguments(type(self), locals())
        if preconditioner == "none":
            preconditioner = None
        adaptive, initial_damping = _parse_damping(damping)
        low, high = damping_bounds
        if not 0 < low <= high:
            raise ValueError(f"damping_bounds must satisfy 0 < min <= max, got {damping_bounds}")
        if cg_max_steps < 1:
            raise ValueError(f"cg_max_steps must be at least 1, got {cg_max_steps}")
        if target_kl is not None and not target_kl > 0:
            raise ValueError(f"target_kl must be positive (or None for no bound), got {target_kl}")
        if solver == "exact" and preconditioner is not None:
            raise ValueError(f"preconditioner={preconditioner!r} preconditions CG; solver='exact' takes none")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive (or None for no clipping), got {max_grad_norm}")
        if curvature == "adaptive" and (preconditioner is not None or solver != "cg"):
            raise ValueError("solver and preconditioner choose how G is solved; curvature='adaptive' solves nothing: leave them unset")
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            tau=tau,
            gamma=gamma,
            train_freq=train_freq,
            gradient_steps=gradient_steps,
            replay_buffer_class=replay_buffer_class,
            replay_buffer_kwargs=replay_buffer_kwargs,
            optimize_memory_usage=optimize_memory_usage,
            n_steps=n_steps,
            target_update_interval=target_update_interval,
            exploration_fraction=exploration_fraction,
            exploration_initial_eps=exploration_initial_eps,
            exploration_final_eps=exploration_final_eps,
            max_grad_norm=max_grad_norm,  # type: ignore[arg-type]  # None: no clipping
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        if self.env is not None:
            check_spaces(self.observation_space, self.action_space)
        self.target_network = target_network
        self.damping = damping
        self.damping_bounds = (float(low), float(high))
        self.adaptive_damping = adaptive
        self.damping_value = initial_damping  # the current d (changes when adaptive; saved with the model)
        self.cg_max_steps = cg_max_steps
        self.cg_tol = cg_tol
        self.solver = solver
        self.curvature = curvature
        self.adaptive_kwargs = adaptive_kwargs
        self.curvature_outputs = curvature_outputs
        self.td_loss = td_loss
        self.target_kl = target_kl
        self.preconditioner = preconditioner
        if _init_setup_model:
            self._setup_model()

    # --- plumbing ---------------------------------------------------------------------------

    def _setup_model(self) -> None:
        if "use_preconditioner" in self.__dict__:  # a checkpoint saved before `preconditioner` and `target_network`
            self.preconditioner = "diagonal" if self.__dict__.pop("use_preconditioner") else None
            self.target_network = self.target_update_interval is not None
            if self.target_update_interval is None:
                self.target_update_interval = 10000
        super()._setup_model()
        # θ: every parameter of the online Q-network, features extractor included, in module order.
        self._q_params = list(self.q_net.parameters())
        if self.curvature == "adaptive":  # a policy buffer: saved, loaded and moved with the policy
            config = AdaptiveConfig(**(self.adaptive_kwargs or {}))
            self.policy.add_module("adaptive_fisher", AdaptiveFisher(self._q_params, config, layer_blocks(self.q_net, self._q_params)))

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_q_params"]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        # NGDQN's policies have no optimizer; a checkpoint older than them was saved with DQN's (and its Adam).
        return (["policy"] if self.policy.optimizer is None else ["policy", "policy.optimizer"]), []

    def _q_function(self, observations: Any) -> tuple[nn.Module, Any]:
        """(f, inputs) with Q_θ(s) = f(inputs): the MLP head on the extracted features when the
        features extractor has no parameters (the fast linearisation path), the whole Q-network otherwise."""
        q_net: QNetwork = self.q_net
        if any(True for _ in q_net.features_extractor.parameters()):
            return q_net, observations
        with torch.no_grad():
            features = q_net.extract_features(observations, q_net.features_extractor)
        return q_net.q_net, features.to(self._q_params[0].dtype)

    def _q_values(self, net: QNetwork, observations: Any) -> Tensor:
        """Q(s, ·) of ``net`` with the features cast to the network's dtype (float64 checks)."""
        features = net.extract_features(observations, net.features_extractor)
        return net.q_net(features.to(next(net.q_net.parameters()).dtype))

    # --- the method -------------------------------------------------------------------------

    def _td_target(self, data: ReplayBufferSamples) -> Tensor:
        """y = r + γ (1 − done) maxₐ′ Q̄(s′, a′); Q̄ the target network, or the online one without it."""
        bootstrap = self.q_net_target if self.target_network else self.q_net
        discounts = data.discounts if data.discounts is not None else self.gamma
        with torch.no_grad():
            next_q = self._q_values(bootstrap, data.next_observations).max(dim=1).values.reshape(-1, 1)
            target = data.rewards + (1 - data.dones) * discounts * next_q
        return target.reshape(-1)

    def _loss_and_residual_grad(self, residual: Tensor) -> tuple[Tensor, Tensor]:
        """L = mean ℓ(r) and dℓ/dr for the chosen TD loss."""
        if self.td_loss == "mse":
            return 0.5 * residual.square().mean(), residual
        return F.smooth_l1_loss(residual, torch.zeros_like(residual)), residual.clamp(-1.0, 1.0)

    def _solves_in_batch_space(self, curvature: GaussNewtonOperator) -> bool:
        """Whether (G + dI) x = ∇L is solved in the space of the minibatch's Jacobian rows (see ``solver``)."""
        return self.solver == "exact" or (self.preconditioner is None and curvature.batch_space_preferred(self.cg_max_steps))

    def _natural_step(self, data: ReplayBufferSamples, learning_rate: float) -> StepStats:
        """One step θ ← θ − η (G + dI)⁻¹ ∇L on the minibatch ``data``."""
        params = self._q_params
        target = self._td_target(data)
        actions = data.actions.long().reshape(-1, 1)
        fn, inputs = self._q_function(data.observations)
        n = target.shape[0]
        # G = (1/n) Σ Jᵢᵀ Jᵢ (σ = 1) of the taken action's Q-value or of all of them.
        damping = self.damping_value
        curvature = gauss_newton(  # G + dI: the damping lives in the operator
            fn, params, inputs, sigma=1.0, damping=damping,
            output_index=actions.reshape(-1) if self.curvature_outputs == "action" else None,
        )
        linearization = curvature.linearization
        q_taken = linearization.outputs.gather(1, actions).reshape(-1)
        residual = q_taken - target
        loss, residual_grad = self._loss_and_residual_grad(residual)
        # ∇L = (1/n) Σᵢ Jᵢᵀ e_{aᵢ} ℓ′(rᵢ): one vjp through the linearisation already built for G.
        cotangent = torch.zeros_like(linearization.outputs).scatter_(1, actions, residual_grad.reshape(-1, 1) / n)
        gradient = flatten(linearization.vjp(cotangent))
        rhs = gradient
        if self.max_grad_norm is not None:
            clip = torch.clamp(self.max_grad_norm / (torch.linalg.vector_norm(gradient) + 1e-12), max=1.0)
            rhs, cotangent = gradient * clip, cotangent * clip

        solve = None
        cg = CGConfig(max_iter=self.cg_max_steps, tol=self.cg_tol)
        if self.curvature == "adaptive":
            # P ← (1 + ε)P − εP(G + dI)P from the rows Jᵢᵀe_c of G (σ = 1)
            k = linearization.outputs.shape[1]
            rows = (torch.zeros_like(linearization.outputs).scatter_(1, actions, 1.0).unsqueeze(-1) if self.curvature_outputs == "action"
                    else torch.eye(k, dtype=linearization.outputs.dtype, device=linearization.outputs.device).expand(n, k, k))
            update = self.policy.adaptive_fisher.update(linearization, rows, damping=damping)
            solve = self.policy.adaptive_fisher.solve(rhs, curvature)  # x = α*P∇L, sized for G + dI (see ``curvature``)
        elif self._solves_in_batch_space(curvature):
            # the right-hand side is Bᵀv, B's rows Jᵢᵀe_c (σ = 1): v is the cotangent at those rows, ordered (c, i)
            by_rows = cotangent.gather(1, actions) if self.curvature_outputs == "action" else cotangent.T
            solve = curvature.batch_space_solve(by_rows.reshape(-1), cg=cg if self.solver == "cg" else None)
        preconditioner = curvature.diagonal() if self.preconditioner == "diagonal" else None
        if preconditioner is not None and damping == 0:
            preconditioner = preconditioner + 1e-8  # diag(G) may vanish on dead units
        # x = (G + dI)⁻¹∇L, η capped so that ½η²xᵀ(G + dI)x ≤ δ (ngrl.natural_step, fixed rate)
        step = natural_step(
            rhs,
            curvature,
            learning_rate=learning_rate,
            max_kl=self.target_kl,
            cg=cg,
            preconditioner=preconditioner,
            solve=solve,
            need_quadratic=self.adaptive_damping,
        )
        result, direction, step_size = step.solve, step.direction, step.step_size

        with torch.no_grad():
            for param, change in zip(params, unflatten(direction, params)):
                param.add_(change, alpha=-step_size)

        ratio = float("nan")
        if self.adaptive_damping:
            with torch.no_grad():
                q_new = self._q_values(self.q_net, data.observations).gather(1, actions).reshape(-1)
                new_loss, _ = self._loss_and_residual_grad(q_new - target)
            # M(−ηx) − M(0) = −η gᵀx + ½η² xᵀGx (undamped: xᵀGx = xᵀ(G + dI)x − d‖x‖²)
            quadratic = step.quadratic - damping * float(torch.dot(direction, direction))
            predicted = -step_size * float(torch.dot(gradient, direction)) + 0.5 * step_size**2 * quadratic
            ratio = reduction_ratio(float(new_loss - loss), predicted)
            low, high = self.damping_bounds
            self.damping_value = levenberg_marquardt(damping, ratio, min_damping=low, max_damping=high)
        adaptive_epsilon = update.smallest_epsilon if self.curvature == "adaptive" else math.nan
        return StepStats(loss, result.iterations, result.residual_norm, step_size, damping, ratio, adaptive_epsilon)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """``gradient_steps`` natural-gradient steps, each on a fresh minibatch from the replay buffer."""
        self.policy.set_training_mode(True)
        learning_rate = float(self.lr_schedule(self._current_progress_remaining))
        self.logger.record("train/learning_rate", learning_rate)

        steps: list[StepStats] = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            steps.append(self._natural_step(data, learning_rate))

        self._n_updates += gradient_steps
        if not steps:
            return
        td_losses = torch.stack([s.td_loss for s in steps]).detach().cpu().numpy()
        if not np.isfinite(td_losses).all():
            raise ValueError(
                "the TD loss became NaN or inf: the Q-network diverged. Lower learning_rate, raise damping "
                "(or use damping='adaptive'), set target_kl, or use a target network (target_update_interval)."
            )
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/td_loss", float(td_losses.mean()))
        self.logger.record("train/loss", float(td_losses.mean()))
        self.logger.record("train/cg_iterations", float(np.mean([s.cg_iterations for s in steps])))
        self.logger.record("train/cg_residual", float(np.mean([s.cg_residual for s in steps])))
        self.logger.record("train/step_size", float(np.mean([s.step_size for s in steps])))
        self.logger.record("train/damping", self.damping_value)
        if self.curvature == "adaptive":
            self.logger.record("train/adaptive_epsilon", float(np.min([s.adaptive_epsilon for s in steps])))
        if self.adaptive_damping:
            ratios = np.array([s.reduction_ratio for s in steps])
            finite = ratios[np.isfinite(ratios)]
            self.logger.record("train/reduction_ratio", float(finite.mean()) if finite.size else float("nan"))

    def learn(
        self: SelfNGDQN,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "NGDQN",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfNGDQN:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
