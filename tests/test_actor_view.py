"""One actor view for feed-forward and recurrent policies: the same interface, checked the same way.

Each case gives a policy, a rollout's actor inputs, and the mean KL of the actor as a function of its
flat parameters on any such inputs (through SB3's own torch distributions); every check below is
written once and run on both kinds.
"""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from ngrl import actor_view, get_flat_params
from ngrl.sb3_adapter import ActorView, FeedForwardActor, SequenceActor, actor_parameters
from tests.conftest import ACTION_SPACES, kl_hessian, tiny_policy
from tests.test_recurrent_policy import sb3_distribution, tiny_recurrent_policy, tiny_sequences

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _feed_forward(space: str):
    policy = tiny_policy(ACTION_SPACES[space])
    inputs = torch.randn(6, 3, generator=torch.Generator().manual_seed(7)).double()
    return policy, inputs, lambda x: kl_hessian(policy, x), torch.arange(0, 6, 2)  # k = 2: rows 0, 2, 4


def _recurrent(space: str):
    policy = tiny_recurrent_policy(ACTION_SPACES[space], "lstm")
    inputs = tiny_sequences(policy, n_seq=3, length=4)
    params = policy.actor_parameters()

    def reference(seqs):
        theta0 = get_flat_params(params)
        with torch.no_grad():
            old = sb3_distribution(policy, params, theta0, seqs)

        def mean_kl(theta):
            kl = torch.distributions.kl_divergence(old, sb3_distribution(policy, params, theta, seqs))
            return (kl.sum(-1) if kl.ndim == 2 else kl).mean()

        return torch.autograd.functional.hessian(mean_kl, theta0)

    return policy, inputs, reference, torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])  # k = 2: sequences 0 and 2, whole


CASES = {
    "feed-forward-discrete": (_feed_forward, "discrete", FeedForwardActor),
    "feed-forward-box": (_feed_forward, "box", FeedForwardActor),
    "recurrent-discrete": (_recurrent, "discrete", SequenceActor),
    "recurrent-box": (_recurrent, "box", SequenceActor),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    make, space, kind = CASES[request.param]
    policy, inputs, reference, kept_rows = make(space)
    return policy, inputs, reference, kept_rows, kind


def test_the_factory_picks_the_view_and_its_parameters_by_identity(case) -> None:
    policy, _, _, _, kind = case
    view = actor_view(policy)
    assert type(view) is kind and isinstance(view, ActorView)
    assert [id(p) for p in view.params] == [id(p) for p in actor_parameters(policy)]
    assert view.family.num_outputs == view.outputs(case[1]).shape[-1]


def test_function_of_parameters_equals_the_outputs(case) -> None:
    policy, inputs, _, _, _ = case
    view = actor_view(policy)
    shifted = [p.detach() + 0.1 for p in view.params]
    out = view.function(shifted, inputs)
    assert not torch.allclose(out, view.outputs(inputs))  # the substituted values are used
    with torch.no_grad():
        for p, value in zip(view.params, shifted):
            p.copy_(value)
    torch.testing.assert_close(out, view.outputs(inputs), rtol=0, atol=0)


def test_fisher_equals_the_kl_hessian(case) -> None:
    """view.fisher(inputs).dense() = ∇² mean KL at θ_old, whichever the kind; damping adds λI."""
    policy, inputs, reference, _, _ = case
    view = actor_view(policy)
    expected = reference(inputs)
    assert expected.abs().max() > 1e-3  # not a trivially zero comparison
    torch.testing.assert_close(view.fisher(inputs).dense(), expected, atol=1e-10, rtol=1e-8)
    damped = view.fisher(inputs, damping=0.3).dense()
    torch.testing.assert_close(damped, expected + 0.3 * torch.eye(len(expected), dtype=expected.dtype), atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(view.linearization(inputs).outputs, view.outputs(inputs).detach(), rtol=0, atol=0)


def test_subsample_keeps_whole_states_and_their_actions(case) -> None:
    """Every k-th state as the view defines it: the kept rows' outputs are unchanged and the actions follow them."""
    policy, inputs, reference, kept_rows, _ = case
    view = actor_view(policy)
    n = view.outputs(inputs).shape[0]
    actions = torch.arange(n, dtype=torch.float64)  # tags: row i carries action i
    same_inputs, same_actions = view.subsample(inputs, actions, 1)
    assert same_inputs is inputs and same_actions is actions  # k = 1 is no copy (NPG reuses F's linearisation)
    sub_inputs, sub_actions = view.subsample(inputs, actions, 2)
    assert torch.equal(sub_actions, actions[kept_rows])
    with torch.no_grad():
        torch.testing.assert_close(view.outputs(sub_inputs), view.outputs(inputs)[kept_rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(view.fisher(sub_inputs).dense(), reference(sub_inputs), atol=1e-10, rtol=1e-8)


def test_inputs_from_a_rollout(case) -> None:
    policy, inputs, _, _, kind = case

    class Rollout:  # the fields the views read of a buffer's whole-rollout batch
        observations = inputs if kind is FeedForwardActor else inputs.observations

    view = actor_view(policy)
    rollout = Rollout() if kind is FeedForwardActor else inputs
    assert view.inputs_from(rollout) is inputs


# The mathematics paths of the agents (surrogate, Fisher, CFA, sub-sampling, meta-steps) and the backend
# go through the view: none of them asks what kind of policy it has.
MATHEMATICS = [
    "agents/npg/npg.py",
    "agents/meta/vpg.py",
    "agents/meta/fomaml.py",
    "agents/meta/imaml.py",
    "agents/meta/maml.py",
    "agents/meta/reptile.py",
    "agents/policy_gradient.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "ngrl").rglob("*.py")),
]
KIND_BRANCH = re.compile(r"\bis_recurrent\b|\b_recurrent\b|[\"']recurrent[\"']|isinstance\([^)]*Recurrent")


@pytest.mark.parametrize("path", MATHEMATICS)
def test_no_branch_on_the_policy_kind(path: str) -> None:
    source = (ROOT / path).read_text()
    assert not KIND_BRANCH.findall(source), f"{path} branches on the policy's kind: call its actor view instead"


def test_kind_branch_pattern_has_teeth() -> None:
    for line in ("if self._recurrent:", "if is_recurrent(policy):", 'getattr(policy, "recurrent", False)', "isinstance(p, RecurrentActorCriticPolicy)"):
        assert KIND_BRANCH.search(line), line
