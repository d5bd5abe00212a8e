"""Natural policy gradient (Kakade 2002) with a KL trust region and a GAE critic."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from gymnasium import spaces
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import explained_variance

from agents.arguments import check_arguments, check_spaces
from agents.common import CheckpointMixin
from agents.npg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from agents.recurrent import CnnErnnPolicy, MlpErnnPolicy
from agents.policy_gradient import PolicyGradientBatch, PolicyGradientMixin, PolicyUpdate
from agents.recurrent.on_policy import RecurrentOnPolicyMixin
from ngrl import (
    CGConfig,
    CGResult,
    LineSearchConfig,
    batched_conjugate_gradient,
    fit_compatible_advantage,
    flat_grad,
    get_flat_params,
    natural_step,
    set_flat_params,
)
from ngrl.fisher import AdaptiveConfig, AdaptiveFisher, KFACOperator, kfac_from_linearization, layer_blocks
from ngrl.recurrent import batched_sequence_fisher
from ngrl.sb3_adapter import FeedForwardActor, SequenceActor
from ngrl.spectral import LanczosEstimate, angle_degrees, largest_eigenvalue, relative_damping

SelfNPG = TypeVar("SelfNPG", bound="NPG")


@dataclass(frozen=True)
class NaturalGradientProblem:
    """What one NPG update solves, (F + λI) w = g, as its learner's current rollout poses it.

    :param batch: the whole rollout, prepared for the surrogate
    :param objective: the surrogate at θ_old, L(θ_old) = mean(Â)
    :param gradient: g = ∇L(θ_old), flat over the actor's parameters
    :param old_outputs: the actor's raw outputs on the rollout at θ_old (π_old)
    :param fisher_inputs: the states F is taken on (recurrent: windows of ``fisher_sequence_length`` steps from their
        stored states; every ``sub_sampling_factor``-th state or window)
    :param fisher_actions: the actions at those states (the empirical Fisher's)
    """

    batch: PolicyGradientBatch
    objective: float
    gradient: torch.Tensor
    old_outputs: torch.Tensor
    fisher_inputs: Any
    fisher_actions: torch.Tensor


class NPG(CheckpointMixin, PolicyGradientMixin, RecurrentOnPolicyMixin, OnPolicyAlgorithm):
    """
    Natural Policy Gradient with a KL trust region (Kakade 2002, "A Natural Policy Gradient";
    Peters & Schaal 2008, "Natural Actor-Critic"; step rule of Schulman et al. 2015, App. C).

    Each update takes the policy-gradient estimate g = ∇_θ E[r(θ)Â] at θ_old and the natural direction
    w = (F + λI)⁻¹g (λ = ``cg_damping``), either by conjugate gradient on Fisher-vector products
    (``natural_direction="cg"``) or by fitting the advantages on compatible features ψ = ∇log π with
    ridge λ (``"cfa"``, the natural actor-critic view: the least-squares w equals (F + λI)⁻¹g). The
    step θ ← θ + αw uses α = sqrt(2δ / wᵀ(F + λI)w), the largest step whose quadratic KL model
    ½α²wᵀ(F + λI)w equals ``target_kl`` = δ (F being the Fisher of the chosen estimator, on the
    sub-sampled states; ``ngrl.natural_step``); with ``line_search=True`` the step is shrunk until
    the surrogate improves and the exact KL is ≤ δ (which makes it TRPO); with ``step_size=η`` it is the fixed
    rate α = min(η, sqrt(2δ / wᵀ(F + λI)w)), δ capping it (a small gradient then makes a small step). The value
    function is fitted with the policy's optimizer (Adam) on GAE returns; its gradients never touch
    the actor's parameters.

    With a recurrent policy (``"MlpErnnPolicy"``, ``"CnnErnnPolicy"``; the cell is chosen by
    ``policy_kwargs=dict(cell="ernn" | "lstm" | "gru")``) the rollout is kept as one sequence per
    environment with the state that entered it; the surrogate, its gradient and the Fisher
    F = (1/n) Σᵢ Jᵢᵀ H(zᵢ) Jᵢ are taken through the unrolled recurrence from that stored state
    (``ngrl.recurrent.sequence_fisher``); the Fisher on windows of ``fisher_sequence_length`` steps from the
    stored states (cheaper products through shorter recurrences), and the critic is fitted on windows of
    ``sequence_length`` steps.
    Both kinds are reached through the actor's view (``ngrl.actor_view``): ``train()`` has no branch on kind.

    :param policy: the policy model ("MlpPolicy", "CnnPolicy", "MultiInputPolicy", "MlpErnnPolicy",
        "CnnErnnPolicy" or a class)
    :param env: the environment to learn from (an env id, an env or a VecEnv)
    :param learning_rate: learning rate of the critic's optimizer (constant or schedule)
    :param n_steps: steps per environment per update (the rollout has n_steps * n_envs transitions)
    :param batch_size: minibatch size of the critic updates
    :param gamma: discount factor
    :param gae_lambda: λ of generalised advantage estimation
    :param target_kl: trust-region radius δ: α = sqrt(2δ / wᵀ(F + λI)w) (with ``step_size``: the cap on α)
    :param step_size: η, a fixed natural step α = min(η, sqrt(2δ / wᵀ(F + λI)w)) in place of the trust region's
        α = sqrt(2δ / wᵀ(F + λI)w); None (default): the trust region's. Not with ``line_search``
    :param fisher_estimator: the curvature F: "exact" (default), "score", "empirical", "diagonal" or "kfac"
        (see ``ngrl.fisher.policy_fisher``), or "adaptive": no solve, w = Pg with P ≈ (F + λI)⁻¹ the running
        inverse of Amari, Park & Fukumizu (2000) (``ngrl.fisher.AdaptiveFisher``, kept in the policy's state),
        stepped once per update, P ← (1 + ε)P − εP(Ŝ + λI)P, on the scores sᵢ = ∇θ log π(ãᵢ|sᵢ) of one action
        ãᵢ sampled from π at each state the Fisher is taken on (a Fisher estimate, as "score"); the trust
        region's quadratic model stays the exact Fisher's on those states, α = sqrt(2δ / wᵀ(F + λI)w).
        Feed-forward policies only, with ``natural_direction="cg"`` and no preconditioner
    :param adaptive_kwargs: ``ngrl.fisher.AdaptiveConfig`` fields of the "adaptive" estimate (structure, epsilon,
        schedule, min_epsilon, initial_curvature, guard); None: its defaults
    :param natural_direction: "cg" (conjugate gradient on F) or "cfa" (compatible function approximation)
    :param cg_max_steps: conjugate-gradient iterations per update
    :param cg_damping: λ added to the Fisher (the ridge of the "cfa" fit): a number λ ≥ 0, or ``"rel_<c>"``
        (e.g. ``"rel_1e-3"``) for λ = c·λ_max(F), λ_max estimated at each update by Lanczos on the undamped
        Fisher (``spectrum_iterations`` products; ``ngrl.spectral``) and logged as ``train/cg_damping``
    :param cg_tol: relative residual at which conjugate gradient stops early
    :param preconditioner: how CG is preconditioned: None (or "none"), "diagonal" (diag(F) + λ) or
        "kfac" (the Kronecker-factored inverse of the exact Fisher on the same states; MLP actors only)
    :param line_search: backtrack on the surrogate with a KL check
    :param line_search_shrinking_factor: step shrink factor of the line search
    :param line_search_max_iter: most line-search trials
    :param n_critic_updates: epochs of critic minibatch updates per rollout
    :param normalize_advantage: standardise advantages per rollout
    :param sub_sampling_factor: estimate the Fisher on every k-th state only (cheaper products);
        with a recurrent policy on every k-th window of ``fisher_sequence_length`` steps (whole sequences when None)
    :param sequence_length: recurrent policies only: steps per window in the critic's minibatches, each window
        run from the critic state stored at its first step (truncated backpropagation through time; at most
        n_steps, a shorter last window where it does not divide n_steps; None: the whole n_steps)
    :param fisher_sequence_length: recurrent policies only: the Fisher is taken on windows of this many steps,
        each run from the actor state stored at its first step, so that its Jacobians stop there (the gradient
        and the measured KL still run through whole rollouts); each env's last n_steps mod this many steps are
        left out of it; None (or ≥ n_steps): the whole rollouts
    :param log_spectrum: log per update ``train/fisher_lambda_max`` (λ_max of the undamped F, by Lanczos),
        ``train/fisher_condition`` (a lower bound of the condition number of F + λI, the matrix CG solves)
        and ``train/cg_gradient_angle`` (the angle in degrees between the natural direction and the
        gradient); costs ``spectrum_iterations`` Fisher products per update
    :param rollout_buffer_class: rollout buffer class (default chosen from the observation space)
    :param rollout_buffer_kwargs: its keyword arguments
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
        "MlpErnnPolicy": MlpErnnPolicy,
        "CnnErnnPolicy": CnnErnnPolicy,
    }
    spectrum_iterations: ClassVar[int] = 15  # Lanczos products per update for "rel_<c>" damping and log_spectrum

    def __init__(
        self,
        policy: str | type[BasePolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        n_steps: int = 2048,
        batch_size: int = 128,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        target_kl: float = 0.01,
        step_size: float | None = None,
        fisher_estimator: str = "exact",
        adaptive_kwargs: dict[str, Any] | None = None,
        natural_direction: str = "cg",
        cg_max_steps: int = 15,
        cg_damping: float | str = 0.1,
        cg_tol: float = 1e-10,
        preconditioner: str | None = None,
        line_search: bool = False,
        line_search_shrinking_factor: float = 0.8,
        line_search_max_iter: int = 10,
        n_critic_updates: int = 10,
        normalize_advantage: bool = True,
        sub_sampling_factor: int = 1,
        sequence_length: int | None = 16,
        fisher_sequence_length: int | None = 64,
        log_spectrum: bool = False,
        rollout_buffer_class: type | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: torch.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        check_arguments(type(self), locals())
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=0.0,  # unused: the natural step has no entropy bonus
            vf_coef=0.0,  # unused: the critic has its own loss
            max_grad_norm=0.0,  # unused: the step length comes from the trust region
            use_sde=False,  # gSDE noise depends on the latent: no closed-form output Fisher
            sde_sample_freq=-1,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        if self.env is not None:
            check_spaces(self.observation_space, self.action_space)
        if natural_direction not in ("cg", "cfa"):
            raise ValueError(f"natural_direction must be 'cg' or 'cfa', got {natural_direction!r}")
        if fisher_estimator == "adaptive" and (natural_direction != "cg" or preconditioner not in (None, "none")):
            raise ValueError("fisher_estimator='adaptive' gives the direction itself: use natural_direction='cg' and no preconditioner")
        if target_kl <= 0:
            raise ValueError("target_kl must be positive")
        if step_size is not None and line_search:
            raise ValueError("line_search backtracks the trust region's step: use it with step_size=None")
        if preconditioner == "none":
            preconditioner = None
        if sub_sampling_factor < 1:
            raise ValueError("sub_sampling_factor must be >= 1")
        if self.env is not None:
            buffer_size = self.env.num_envs * n_steps
            if normalize_advantage and buffer_size <= 1:
                raise ValueError("normalize_advantage needs n_steps * n_envs > 1")
        self.batch_size = batch_size
        self.target_kl = target_kl
        self.step_size = step_size
        self.fisher_estimator = fisher_estimator
        self.adaptive_kwargs = adaptive_kwargs
        self.natural_direction = natural_direction
        self.cg_max_steps = cg_max_steps
        self.cg_damping = cg_damping
        self.cg_tol = cg_tol
        self.preconditioner = preconditioner
        self.line_search = line_search
        self.line_search_shrinking_factor = line_search_shrinking_factor
        self.line_search_max_iter = line_search_max_iter
        self.n_critic_updates = n_critic_updates
        self.normalize_advantage = normalize_advantage
        self.sub_sampling_factor = sub_sampling_factor
        self.sequence_length = sequence_length
        self.fisher_sequence_length = fisher_sequence_length
        self.log_spectrum = log_spectrum
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        if "use_preconditioner" in self.__dict__:  # a checkpoint saved before `preconditioner` existed
            legacy = self.__dict__.pop("use_preconditioner")
            self.preconditioner = "diagonal" if legacy else ("kfac" if self.fisher_estimator == "kfac" else None)
        self._setup_actor()
        if self.preconditioner == "kfac" and not self._actor.supports_kfac:
            raise ValueError("preconditioner='kfac' needs an MLP actor; with a recurrent policy use None or 'diagonal'")
        if self.fisher_estimator == "adaptive":  # a policy buffer: saved, loaded and moved with the policy
            if not isinstance(self._actor, FeedForwardActor):  # a sequence's rows share their history: no per-state scores
                raise ValueError("fisher_estimator='adaptive' needs per-state scores: use a feed-forward policy")
            config = AdaptiveConfig(**(self.adaptive_kwargs or {}))
            self.policy.add_module("adaptive_fisher", AdaptiveFisher(self._actor_params, config, layer_blocks(self.policy, self._actor_params)))

    def _fisher_states(self, inputs: Any, actions: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """The rollout's states (and actions) the Fisher is taken on: recurrent, windows of ``fisher_sequence_length``
        steps from their stored states; then every ``sub_sampling_factor``-th state, or window."""
        inputs, actions = self._fisher_batch(inputs, actions)
        return self._actor.subsample(inputs, actions, self.sub_sampling_factor)

    def _fisher(self, inputs: Any, actions: torch.Tensor) -> tuple[Any, LanczosEstimate | None]:
        """F + λI over the actor's parameters on the Fisher's states (:meth:`_fisher_states`), and F's spectrum.

        The spectrum (Lanczos on the undamped F) is estimated only when ``cg_damping="rel_<c>"`` (λ = c·λ_max(F))
        or ``log_spectrum`` asks for it; otherwise it is None and nothing beyond the operator is computed.
        The operator's ``damping`` is the resolved λ: every later use of λ in the update reads it there.
        """
        estimator = "exact" if self.fisher_estimator == "adaptive" else self.fisher_estimator  # adaptive: F of the KL model
        factor = relative_damping(self.cg_damping)
        if factor is None and not self.log_spectrum:
            fisher = self._actor.fisher(inputs, estimator=estimator, actions=actions, damping=self.cg_damping)
            return fisher, None
        fisher = self._actor.fisher(inputs, estimator=estimator, actions=actions)  # undamped: λ_max(F) first
        # a start vector fixed by the update's number: deterministic, and the global random state is left alone
        spectrum = largest_eigenvalue(fisher, iterations=self.spectrum_iterations, generator=self._n_updates)
        # set on this freshly built operator before anything reads it (damping lives in the operator)
        fisher.damping = float(self.cg_damping) if factor is None else factor * max(spectrum.largest, 0.0)
        return fisher, spectrum

    def _adaptive_solve(self, gradient: torch.Tensor, fisher: Any, fisher_obs: Any) -> CGResult:
        """Amari's running P ≈ (F + λI)⁻¹, stepped on the scores of one action sampled from π at each of ``fisher_obs``, then w = Pg.

        (w is returned sized for ``fisher``'s quadratic model, which the trust-region rule ignores: α fixes the length.)
        """
        linearization = getattr(fisher, "linearization", None) or self._actor.linearization(fisher_obs)
        family = self._actor.family
        with torch.no_grad():
            sampled = family.sample(linearization.outputs)
        score = family.score_cotangent(linearization.outputs, sampled)  # gᵢ = ∇z log π(ãᵢ|zᵢ): sᵢ = Jᵢᵀgᵢ
        update = self.policy.adaptive_fisher.update(linearization, score.unsqueeze(-1), damping=fisher.damping)
        self.logger.record("train/adaptive_epsilon", update.smallest_epsilon)
        return self.policy.adaptive_fisher.solve(gradient, fisher)

    def _compatible_fit(self, obs: Any, actions: torch.Tensor, advantages: torch.Tensor, fisher: Any, fisher_obs: Any) -> CGResult:
        """Natural actor-critic: regress Â on ψ = ∇log π(a|s) with ridge λ; the least-squares weights are (F + λI)⁻¹g."""
        linearization = getattr(fisher, "linearization", None) if fisher_obs is obs else None
        if linearization is None:
            linearization = self._actor.linearization(obs)
        score = self._actor.family.score_cotangent(linearization.outputs, actions)
        result = fit_compatible_advantage(
            linearization, score, advantages, ridge=fisher.damping, cg_max_iter=self.cg_max_steps, cg_tol=self.cg_tol
        )
        return result.raise_if_not_positive_definite(fisher.damping)

    def _preconditioner(self, fisher: Any, fisher_obs: Any) -> Any:
        """M⁻¹ for CG on ``fisher``: none, diag(F) + λ, or the KFAC inverse ≈ (F + λI)⁻¹ on the same states."""
        if self.preconditioner is None:
            return None
        if self.preconditioner == "diagonal":
            return fisher.diagonal()
        if isinstance(fisher, KFACOperator):
            return fisher.solve
        # KFAC of the exact Fisher (expectation over actions in closed form) of the states F was taken on.
        linearization = getattr(fisher, "linearization", None) or self._actor.linearization(fisher_obs)
        root = self._actor.family.fisher_sqrt(linearization.outputs)
        return kfac_from_linearization(linearization, root, self._actor_params, fisher.damping).solve

    def natural_gradient_problem(self) -> NaturalGradientProblem:
        """The system (F + λI) w = g of the next update, from the rollout buffer as it is (see :meth:`train`)."""
        # the whole rollout (recurrent: one sequence per env, from the state that entered its first step)
        batch = self.policy_gradient_batch()
        outputs = self._actor.outputs(batch.actor_inputs)
        # L(θ) = E[π_θ(a|s)/π_old(a|s) · Â]; its gradient at θ_old is the policy gradient
        objective = batch.surrogate(self._actor.family, outputs)
        gradient = flat_grad(objective, self._actor_params)
        fisher_inputs, fisher_actions = self._fisher_states(batch.actor_inputs, batch.actions)
        # π_old, kept as tensors: SB3's distribution object is reused
        return NaturalGradientProblem(batch, objective.item(), gradient, outputs.detach(), fisher_inputs, fisher_actions)

    @property
    def solves_jointly(self) -> bool:
        """Whether :meth:`solve_jointly` batches this learner's solves with others': an ERNN policy, the exact Fisher by
        plain CG under a fixed damping (LSTM and GRU cells have no fast ``vmap`` rule: measured slower batched)."""
        return (isinstance(self._actor, SequenceActor) and getattr(self.policy, "cell", None) == "ernn"
                and self.fisher_estimator == "exact" and self.natural_direction == "cg" and self.preconditioner is None
                and relative_damping(self.cg_damping) is None and not self.log_spectrum)

    @staticmethod
    def solve_jointly(learners: Sequence["NPG"], problems: Sequence[NaturalGradientProblem]) -> list[CGResult]:
        """The natural directions wᵢ = (Fᵢ + λI)⁻¹gᵢ of several learners' problems, solved together.

        Their Fishers are one block-diagonal operator over the stacked parameter sets, their sequences run through one
        recurrence (:func:`ngrl.recurrent.batched_sequence_fisher`), and each system runs its own CG in lockstep with
        the others (:func:`ngrl.batched_conjugate_gradient`): the iterates each system would take alone, for one
        product per iteration instead of one per learner. Each result carries wᵢᵀ(Fᵢ + λI)wᵢ (``quadratic``), what
        :meth:`train` sizes the step with. The learners must share their settings and ``solves_jointly``.

        :raises NotPositiveDefiniteError: when a system's solve meets no positive curvature, as a learner's own would
        """
        first = learners[0]
        settings = lambda learner: (learner.cg_damping, learner.cg_max_steps, learner.cg_tol, learner.solves_jointly)  # noqa: E731
        if any(settings(learner) != settings(first) for learner in learners) or not first.solves_jointly:
            raise ValueError("solve_jointly needs learners of the same CG settings, each with solves_jointly")
        operator = batched_sequence_fisher(
            first._actor.function, [learner._actor_params for learner in learners], [p.fisher_inputs for p in problems],
            first._actor.family, damping=float(first.cg_damping),
        )
        gradients = torch.stack([problem.gradient for problem in problems])
        solves = batched_conjugate_gradient(operator.mv, gradients, max_iter=first.cg_max_steps, tol=first.cg_tol)
        for solve in solves:
            solve.raise_if_not_positive_definite(operator.damping)
        quadratics = operator.quadratic(torch.stack([solve.x for solve in solves])).tolist()
        return [dataclasses.replace(solve, quadratic=q) for solve, q in zip(solves, quadratics)]

    def train(self, problem: NaturalGradientProblem | None = None, direction: CGResult | None = None) -> PolicyUpdate:
        """One natural-gradient step of the actor on the whole rollout, then the critic's epochs.

        :param problem: the update's system, as :meth:`natural_gradient_problem` posed it (default: posed now)
        :param direction: its solution w ≈ (F + λI)⁻¹g with wᵀ(F + λI)w in ``quadratic``, when the caller solved it
            (a meta-learner solves its tasks' systems together: :meth:`solve_jointly`); default: solved here
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        problem = self.natural_gradient_problem() if problem is None else problem
        batch, gradient, old_outputs = problem.batch, problem.gradient, problem.old_outputs
        actor_inputs, actions, advantages = batch.actor_inputs, batch.actions, batch.advantages
        params, family = self._actor_params, self._actor.family

        def surrogate(outputs: torch.Tensor) -> torch.Tensor:
            # L(θ) = E[π_θ(a|s)/π_old(a|s) · Â]; its gradient at θ_old is the policy gradient.
            return batch.surrogate(family, outputs)

        fisher, spectrum, solve, fisher_inputs = None, None, direction, problem.fisher_inputs
        if direction is None:
            fisher, spectrum = self._fisher(fisher_inputs, problem.fisher_actions)  # F + λI (the damping is in the operator)
            if self.natural_direction == "cfa":
                solve = self._compatible_fit(actor_inputs, actions, advantages, fisher, fisher_inputs)
            elif self.fisher_estimator == "adaptive":
                solve = self._adaptive_solve(gradient, fisher, fisher_inputs)
        elif not (self.solves_jointly and math.isfinite(direction.quadratic)):
            raise ValueError("a direction solved by the caller needs a learner that solves_jointly and its wᵀ(F + λI)w in "
                             "direction.quadratic (see NPG.solve_jointly)")
        theta_old = get_flat_params(params)

        @torch.no_grad()
        def evaluate(step: torch.Tensor) -> tuple[float, float]:
            set_flat_params(params, theta_old + step)
            outputs = self._actor.outputs(actor_inputs)
            return float(surrogate(outputs)), float(family.kl(old_outputs, outputs).mean())

        # w = (F + λI)⁻¹g, θ ← θ + αw with α = sqrt(2δ / wᵀ(F + λI)w), or min(η, that) at a fixed rate (ngrl.natural_step)
        step = natural_step(
            gradient,
            fisher,
            max_kl=self.target_kl,
            learning_rate=self.step_size,
            cg=CGConfig(max_iter=self.cg_max_steps, tol=self.cg_tol),
            preconditioner=self._preconditioner(fisher, fisher_inputs) if solve is None else None,
            solve=solve,
            line_search=LineSearchConfig(self.line_search_shrinking_factor, self.line_search_max_iter) if self.line_search else None,
            evaluate=evaluate,
            baseline_objective=problem.objective,
        )
        if step.fraction == 0.0:  # the line search accepted no step
            set_flat_params(params, theta_old)
        result, kl, new_objective = step.solve, step.measured_kl, step.objective

        value_loss = self._fit_critic()

        self._n_updates += 1
        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())
        self.logger.record("train/kl", kl)
        self.logger.record("train/cg_iterations", result.iterations)
        self.logger.record("train/cg_residual", result.residual_norm)
        self.logger.record("train/step_size", step.step_size)
        self.logger.record("train/predicted_kl", step.predicted_kl)
        self.logger.record("train/line_search_steps", step.line_search_steps)
        self.logger.record("train/surrogate_improvement", new_objective - problem.objective)
        self.logger.record("train/value_loss", value_loss)
        self.logger.record("train/explained_variance", float(explained_var))
        if relative_damping(self.cg_damping) is not None:
            self.logger.record("train/cg_damping", fisher.damping)  # the λ = c·λ_max(F) this update used
        if self.log_spectrum:
            self.logger.record("train/fisher_lambda_max", spectrum.largest)
            # of F + λI, the matrix CG solves: Ritz values lie inside the spectrum, so this is ≤ the true one
            self.logger.record("train/fisher_condition", spectrum.condition_number(fisher.damping))
            self.logger.record("train/cg_gradient_angle", angle_degrees(step.direction, gradient))
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        return PolicyUpdate(batch, kl, result.iterations)

    def learn(
        self: SelfNPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "NPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfNPG:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
