"""ACM output and the choice rules of docs/compute-budget.md."""
import math

import pytest
import torch

from acm_tools.acm import (ACM, ACMConfig, GateConfig, cap_total, cap_units, choose, choose_auto, survival,
                           trim_served_first, trim_to_cap)


def gelu_erf(a):
    return 0.5 * a * (1.0 + torch.erf(a / math.sqrt(2.0)))


def naive_gate(acm, x):
    """Gate logits of one token x (d_in,), layer by layer."""
    act = {'identity': lambda a: a, 'gelu': gelu_erf, 'relu': torch.relu, 'tanh': torch.tanh}[acm.cfg.gate.activation]
    for j, layer in enumerate(acm.gating_network.net):
        if j > 0:
            x = act(x)
        x = layer.weight @ x + layer.bias
    return x


def naive_acm(acm, x, k):
    """out_k(x) = sum_{n<k} y_n(x) + sum_{j<=k} b2[j], token by token and learner by learner."""
    B, T, _ = x.shape
    h, d_out = acm.cfg.learner_dim, acm.d_out
    act = {'identity': lambda a: a, 'gelu': gelu_erf}[acm.cfg.activation]
    out = torch.zeros(B, T, d_out, dtype=x.dtype)
    for b in range(B):
        for t in range(T):
            acc = torch.zeros(d_out, dtype=x.dtype)
            for n in range(int(k[b, t])):
                cols = slice(n * h, (n + 1) * h)
                a = x[b, t] @ acm.w1[:, cols]
                if acm.b1 is not None:
                    a = a + acm.b1[cols]
                acc = acc + act(a) @ acm.w2[cols, :]
            if acm.b2 is not None:
                for j in range(int(k[b, t]) + 1):
                    acc = acc + acm.b2[j * d_out:(j + 1) * d_out]
            out[b, t] = acc
    return out


def make_acm(hidden_bias, output_bias, activation, k_min, gate, seed=0, d_in=6, d_out=5, N=4, h=3):
    torch.manual_seed(seed)
    cfg = ACMConfig(num_learners=N, learner_dim=h, activation=activation, min_choice=k_min,
                    hidden_bias=hidden_bias, output_bias=output_bias, gate=gate)
    acm = ACM(d_in, d_out, cfg).double()
    with torch.no_grad():
        for p in acm.parameters():
            p.normal_()  # large gate logits and nonzero biases everywhere
    return acm


ACM_VARIANTS = [
    (True, True, 'gelu', 0, GateConfig(depth=2, hidden_dim=7, activation='gelu')),
    (False, False, 'identity', 1, GateConfig(depth=1)),
    (True, False, 'gelu', 2, GateConfig(depth=3, hidden_dim=4, activation='tanh')),
    (False, True, 'identity', 0, GateConfig(depth=2, hidden_dim=5, activation='relu')),
]
MODES = [dict(mode='full'), dict(mode='auto'), dict(mode='cap', beta=0.3),
         dict(mode='cap', beta=torch.tensor([0.1, 0.6, 1.0])), dict(mode='uniform', k=0),
         dict(mode='uniform', k=2), dict(mode='uniform', k=99)]


@pytest.mark.parametrize('variant', ACM_VARIANTS)
@pytest.mark.parametrize('mode', MODES)
def test_acm_output_matches_naive_loop(variant, mode):
    """Should give, for every mode, the per-token, per-learner sum of docs/model-format.md."""
    acm = make_acm(*variant)
    x = torch.randn(3, 7, acm.d_in, dtype=torch.float64)
    out, k = acm(x, **mode)
    assert out.shape == (3, 7, acm.d_out) and k.shape == (3, 7)
    torch.testing.assert_close(out, naive_acm(acm, x, k), rtol=1e-12, atol=1e-12)
    N, k_min = acm.cfg.num_learners, acm.cfg.min_choice
    assert int(k.min()) >= k_min and int(k.max()) <= N
    if mode['mode'] == 'full':
        assert (k == N).all()
    if mode['mode'] == 'uniform':
        assert (k == min(max(mode['k'], k_min), N)).all()
    if mode['mode'] in ('auto', 'cap'):
        k_auto = torch.tensor([[k_min + int(torch.argmax(naive_gate(acm, x[b, t]))) for t in range(7)]
                               for b in range(3)])
        if mode['mode'] == 'auto':
            assert torch.equal(k, k_auto)
        else:
            assert (k <= k_auto).all()


def test_acm_zero_choice_is_bias_only():
    """Should output zeros for k = 0 without b2, and b2[0] with it."""
    for output_bias in (False, True):
        acm = make_acm(True, output_bias, 'gelu', 0, GateConfig())
        x = torch.randn(1, 2, acm.d_in, dtype=torch.float64)
        out = acm.forward_k(x, torch.zeros(1, 2, dtype=torch.long))
        expected = acm.b2[:acm.d_out].expand(1, 2, -1) if output_bias else torch.zeros(1, 2, acm.d_out,
                                                                                        dtype=torch.float64)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_acm_state_dict_keys():
    """Should name its tensors w1, b1, w2, b2, gating_network.net.{j} with consecutive j."""
    acm = make_acm(True, True, 'gelu', 1, GateConfig(depth=3, hidden_dim=4, activation='gelu'), N=4, h=3)
    shapes = {k: list(v.shape) for k, v in acm.state_dict().items()}
    assert shapes == {
        'w1': [6, 12], 'b1': [12], 'w2': [12, 5], 'b2': [25],
        'gating_network.net.0.weight': [4, 6], 'gating_network.net.0.bias': [4],
        'gating_network.net.1.weight': [4, 4], 'gating_network.net.1.bias': [4],
        'gating_network.net.2.weight': [4, 4], 'gating_network.net.2.bias': [4],
    }


# -----------------------------------------------------------------------------
# choice rules

def logits_from_probs(rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def test_auto_ties_go_to_smaller_k():
    """Should pick the argmax, and the smaller k where logits tie exactly."""
    z = torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0], [3.0, 3.0, 3.0], [0.0, 1.0, 2.0], [5.0, -1.0, 5.0]])
    assert choose_auto(z, 0).tolist() == [0, 1, 0, 2, 0]
    assert choose_auto(z, 2).tolist() == [2, 3, 2, 4, 2]
    assert choose_auto(z.unsqueeze(0), 1).tolist() == [[1, 2, 1, 3, 1]]


def test_cap_total():
    """Should be max(k_min*T, floor(beta*N*T + 1e-9))."""
    assert 0.29 * 1 * 100 < 29  # rounding would lose a learner without the epsilon
    assert cap_total(0.29, 1, 100, 0) == 29
    assert cap_total(0.3, 4, 10, 0) == 12
    assert cap_total(0.5, 4, 17, 0) == 34
    assert cap_total(0.25, 4, 17, 1) == 17
    assert cap_total(0.1, 4, 17, 1) == 17  # the k_min floor binds: floor(6.8) = 6 < 17
    assert cap_total(0.99, 3, 10, 0) == 29
    assert cap_total(1.0, 3, 10, 0) == 30


def test_survival_is_a_suffix_sum():
    """Should give S[t, c] = P(K >= k_min + c), starting at 1 and never growing."""
    z = torch.randn(5, 4, dtype=torch.float32)
    S = survival(z)
    assert S.dtype == torch.float64
    p = torch.softmax(z.double(), dim=-1)
    for c in range(4):
        torch.testing.assert_close(S[:, c], p[:, c:].sum(-1))
    assert (S[:, :-1] >= S[:, 1:]).all()


def test_cap_trims_from_the_top_level_down():
    """Should keep every token's j-th learner before any token's (j+1)-th, and within a level the units
    with the highest survival probability."""
    # token 0: k_auto 2, S(1) = .9, S(2) = .7; token 1: k_auto 2, S(1) = .95, S(2) = .8; token 2: k_auto 1, S(1) = .65
    z = logits_from_probs([[0.1, 0.2, 0.7], [0.05, 0.15, 0.8], [0.35, 0.6, 0.05]])
    k_auto = choose_auto(z, 0)
    assert k_auto.tolist() == [2, 2, 1]
    units = [(t, j) for _, t, j in cap_units(z, k_auto, 0)]
    assert units == [(1, 1), (0, 1), (2, 1), (1, 2), (0, 2)]
    assert trim_to_cap(z, k_auto, 0, 2, 0.5).tolist() == [1, 1, 1]  # C = 3
    assert trim_to_cap(z, k_auto, 0, 2, 4 / 6).tolist() == [1, 2, 1]  # C = 4
    assert trim_to_cap(z, k_auto, 0, 2, 2 / 6).tolist() == [1, 1, 0]  # C = 2
    assert trim_to_cap(z, k_auto, 0, 2, 5 / 6).tolist() == [2, 2, 1]  # C = 5 = sum(k_auto): kept as is
    assert trim_to_cap(z, k_auto, 0, 2, 0.1).tolist() == [0, 0, 0]  # C = 0


def test_cap_ties_go_to_earlier_tokens():
    """Should break survival ties by token index, then by j."""
    z = torch.tensor([[0.0, 1.0, 2.0]] * 3, dtype=torch.float64)  # identical tokens, k_auto = 2
    k_auto = choose_auto(z, 0)
    assert [(t, j) for _, t, j in cap_units(z, k_auto, 0)] == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]
    assert trim_to_cap(z, k_auto, 0, 2, 0.5).tolist() == [1, 1, 1]
    assert trim_to_cap(z, k_auto, 0, 2, 4 / 6).tolist() == [2, 1, 1]
    assert trim_to_cap(z, k_auto, 0, 2, 5 / 6).tolist() == [2, 2, 1]
    assert trim_to_cap(z, k_auto, 0, 2, 2 / 6).tolist() == [1, 1, 0]


def test_cap_with_min_choice():
    """Should count units above k_min only, and never go below k_min."""
    # k_min = 1, N = 3: logits over k = 1, 2, 3
    z = logits_from_probs([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.05, 0.05, 0.9]])
    k_auto = choose_auto(z, 1)
    assert k_auto.tolist() == [3, 1, 3, 3]
    # units: t0 (.9, .7), t2 (.8, .5), t3 (.95, .9); C = floor(.5 * 3 * 4) = 6 -> keep 2 units
    assert trim_to_cap(z, k_auto, 1, 3, 0.5).tolist() == [2, 1, 1, 2]
    assert trim_to_cap(z, k_auto, 1, 3, 0.1).tolist() == [1, 1, 1, 1]  # C = max(4, 1)
    assert trim_to_cap(z, k_auto, 1, 3, 1.0).tolist() == [3, 1, 3, 3]


def greedy_trim(z, k_auto, k_min, N, beta):
    """The cap the other way round: take away the top unit of a token with the most learners (the least
    sure of them: lowest S, then the latest token) until the sum is C."""
    T = z.shape[0]
    C = cap_total(beta, N, T, k_min)
    p = torch.softmax(z.double(), dim=-1)
    k = k_auto.clone()
    while int(k.sum()) > C:
        # the unit on top of each token is its (t, k_t); S_t(k_t) is the lowest of its units
        top = int(k.max())
        candidates = [(float(p[t, k[t] - k_min:].sum()), t) for t in range(T) if k[t] == top]
        s_min = min(s for s, _ in candidates)
        t = max(t for s, t in candidates if s == s_min)
        k[t] -= 1
    return k


def test_cap_properties_on_random_logits():
    """Should keep a prefix per token, never exceed auto nor go below k_min, hit C exactly when trimming,
    and agree with removing the least sure units one at a time."""
    g = torch.Generator().manual_seed(0)
    for trial in range(300):
        N = int(torch.randint(1, 6, (1,), generator=g))
        k_min = int(torch.randint(0, N + 1, (1,), generator=g))
        T = int(torch.randint(1, 12, (1,), generator=g))
        beta = float(torch.rand(1, generator=g)) * 0.999 + 0.001
        # coarse logits so that exact ties (in S and in the argmax) happen often
        z = torch.randint(-2, 3, (T, N + 1 - k_min), generator=g).double() * 0.5
        k_auto = choose_auto(z, k_min)
        k = trim_to_cap(z, k_auto, k_min, N, beta)
        C = cap_total(beta, N, T, k_min)
        assert (k >= k_min).all() and (k <= k_auto).all()
        if int(k_auto.sum()) > C:
            assert int(k.sum()) == C
            kept = cap_units(z, k_auto, k_min)[:C - k_min * T]
            for t in range(T):
                js = sorted(j for _, u, j in kept if u == t)
                assert js == list(range(k_min + 1, int(k[t]) + 1))  # a prefix of the learners
        else:
            assert torch.equal(k, k_auto)
        assert torch.equal(k, greedy_trim(z, k_auto, k_min, N, beta)), (trial, z, k_auto, beta)


def test_served_first_fills_the_head_before_the_tail():
    """Should give the first tokens the cap less the rest's k_min floor, by the cap's own rule among them, and the
    rest what the first left; stay within C; and be trim_to_cap when first is 0 or T."""
    # three tokens ask for N = 2; the last one is the surest, so a plain cap of C = 4 keeps its second learner
    z = torch.tensor([[0.0, 1.0, 1.5], [0.0, 1.0, 1.5], [-9.0, -9.0, 9.0]], dtype=torch.float64)
    k_auto = choose_auto(z, 0)
    assert k_auto.tolist() == [2, 2, 2]
    assert trim_to_cap(z, k_auto, 0, 2, 4 / 6).tolist() == [1, 1, 2]
    assert trim_served_first(z, k_auto, 0, 2, 4 / 6, 2).tolist() == [2, 2, 0]  # the head takes all 4
    z1 = z[:, 1:]  # the same gate with k_min 1: choices k = 1, 2
    assert trim_served_first(z1, choose_auto(z1, 1), 1, 2, 4 / 6, 2).tolist() == [2, 1, 1]  # the tail's floor first
    assert trim_served_first(z, k_auto, 0, 2, 5 / 6, 1).tolist() == [2, 1, 2]  # the head's 2, then the tail's rule
    g = torch.Generator().manual_seed(3)
    for trial in range(300):
        N = int(torch.randint(1, 6, (1,), generator=g))
        k_min = int(torch.randint(0, 2, (1,), generator=g)) if N > 1 else 0
        T = int(torch.randint(1, 12, (1,), generator=g))
        first = int(torch.randint(0, T + 1, (1,), generator=g))
        beta = float(torch.rand(1, generator=g)) * 0.999 + 0.001
        z = torch.randint(-2, 3, (T, N + 1 - k_min), generator=g).double() * 0.5
        k_auto = choose_auto(z, k_min)
        k = trim_served_first(z, k_auto, k_min, N, beta, first)
        C = cap_total(beta, N, T, k_min)
        assert (k >= k_min).all() and (k <= k_auto).all() and int(k.sum()) <= C
        if first in (0, T):
            assert torch.equal(k, trim_to_cap(z, k_auto, k_min, N, beta))
            continue
        # the head alone: a sequence of `first` tokens under C less the tail's floor
        head_cap = C - k_min * (T - first)
        head = k_auto[:first] if int(k_auto[:first].sum()) <= head_cap else None
        if head is None:
            assert int(k[:first].sum()) == head_cap
        else:
            assert torch.equal(k[:first], head)
        tail_cap = C - int(k[:first].sum())
        assert torch.equal(k[first:], k_auto[first:]) or int(k[first:].sum()) == tail_cap


def test_choose_cap_is_per_sequence():
    """Should trim each sequence to its own beta."""
    cfg = ACMConfig(num_learners=2, learner_dim=1, min_choice=0)
    z = torch.tensor([[0.0, 1.0, 2.0]] * 3, dtype=torch.float64)
    logits = torch.stack([z, z, z])  # (3, 3, 3)
    k = choose(logits, 'cap', cfg, 3, 3, beta=torch.tensor([0.5, 4 / 6, 1.0]))
    assert k.tolist() == [[1, 1, 1], [2, 1, 1], [2, 2, 2]]
    assert choose(logits, 'cap', cfg, 3, 3, beta=0.5).tolist() == [[1, 1, 1]] * 3


@pytest.mark.parametrize('kw', [dict(mode='cap'), dict(mode='cap', beta=0.0), dict(mode='cap', beta=1.5),
                                dict(mode='cap', beta=torch.tensor([0.5, 0.5])), dict(mode='uniform'),
                                dict(mode='sometimes')])
def test_bad_modes_are_rejected(kw):
    """Should reject a cap without a beta in (0, 1] per sequence, a uniform without k, or an unknown mode."""
    acm = make_acm(True, False, 'gelu', 0, GateConfig())
    with pytest.raises(ValueError):
        acm(torch.randn(3, 2, acm.d_in, dtype=torch.float64), **kw)


def test_batched_cap_matches_reference_rule():
    """Should keep exactly the units trim_to_cap keeps, for random logits, counts and budgets."""
    from acm_tools.acm import cap_choices_batched, trim_to_cap
    g = torch.Generator().manual_seed(3)
    for k_min, N in [(0, 4), (1, 4), (0, 2), (1, 3)]:
        C = N + 1 - k_min
        logits = torch.randn(16, 23, C, generator=g) * 2
        k = k_min + torch.randint(0, C, (16, 23), generator=g)
        beta = torch.rand(16, generator=g) * 0.9 + 0.1
        got = cap_choices_batched(logits, k, k_min, N, beta)
        for b in range(16):
            assert torch.equal(got[b], trim_to_cap(logits[b], k[b], k_min, N, float(beta[b])))


def test_gumbel_forward_reaches_the_gate():
    """Should give the gate a gradient from the output (the reference code's gated forward does not),
    and output one of the prefix outputs per token."""
    torch.manual_seed(0)
    cfg = ACMConfig(num_learners=4, learner_dim=3, activation='gelu', min_choice=0, output_bias=True,
                    gate=GateConfig(depth=3, hidden_dim=8))
    acm = ACM(6, 5, cfg)
    x = torch.randn(2, 7, 6)
    out, g = acm(x, mode='gumbel', tau=0.8, beta=torch.tensor([0.3, 1.0]))
    out.sum().backward()
    assert acm.gating_network.net[0].weight.grad is not None
    assert acm.gating_network.net[0].weight.grad.abs().sum() > 0
    k = g.argmax(-1)  # (2, 7)
    assert torch.allclose(out, acm.forward_k(x, k + cfg.min_choice), atol=1e-5)
    assert k[0].sum() <= int(0.3 * 4 * 7 + 1e-9)  # the cap held for the first sequence


def test_gumbel_serves_the_first_tokens_first():
    """Should trim the sampled choices of one sequence by trim_served_first when given the tokens served first."""
    torch.manual_seed(1)
    cfg = ACMConfig(num_learners=4, learner_dim=3, activation='gelu', min_choice=1, gate=GateConfig(depth=1))
    acm = ACM(6, 5, cfg)
    x = torch.randn(1, 40, 6)
    for first in (0, 9, 40):
        torch.manual_seed(2)
        _, sampled = acm(x, mode='gumbel', tau=0.8)  # the same draw, uncapped
        torch.manual_seed(2)
        out, g = acm.forward_gumbel(x, tau=0.8, beta=torch.tensor([0.4]), first=first)
        logits = acm.gating_network(x)[0].detach()
        want = trim_served_first(logits, sampled[0].argmax(-1) + 1, 1, 4, 0.4, first)
        assert torch.equal(g[0].argmax(-1) + 1, want), first
        assert torch.allclose(out, acm.forward_k(x, want[None]), atol=1e-5)


def test_split_budget_follows_shares():
    """Should spread a cap in proportion to the shares, clip at 1 and at the k_min floors, and spend the
    whole budget when it can (the same cases as the engine's splitBudgetFollowsShares)."""
    from acm_tools.acm import split_budget

    def split(beta, shares, floors, costs):
        out = split_budget(beta, {f'p{i}': layer for i, layer in enumerate(zip(shares, floors, costs))})
        return [out[f'p{i}'] for i in range(len(shares))]

    assert split(0.3, [1, 0.5], [0, 0], [1, 1]) == pytest.approx([0.4, 0.2], abs=1e-12)
    assert split(0.9, [1, 0.5], [0, 0], [1, 1]) == pytest.approx([1, 0.8], abs=1e-12)
    assert split(1.0, [1, 0.5], [0, 0], [1, 1]) == [1, 1]
    assert split(0.35, [None] * 3, [0, 0.25, 0], [8, 1, 3]) == pytest.approx([0.35] * 3, abs=1e-12)
    assert split(0.2, [None, None], [0, 0.25], [3, 1]) == pytest.approx([0.55 / 3, 0.25], abs=1e-12)
    assert split(0.5, [0, 1], [0.25, 0], [1, 1]) == pytest.approx([0.25, 0.75], abs=1e-12)
    assert split_budget(0.5, {}) == {}
    # sorted paths: the result does not depend on the dict's order
    layers = {'b': (0.3, 0.0, 5.0), 'a': (0.9, 0.25, 2.0), 'c': (0.5, 0.0, 7.0)}
    assert split_budget(0.4, layers) == split_budget(0.4, dict(reversed(list(layers.items()))))


def test_layer_budgets_spend_the_cap():
    """Should give a capped ViT's ACMs budgets whose cost is the cap, so the realized fraction stays
    under it (k_min = 0 everywhere here)."""
    from acm_tools.vit import VisionTransformer, ViTConfig, compute_fraction, layer_budgets
    cfg = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_dim=8, num_layers=2, num_heads=2,
                    mlp_dim=16, num_classes=3,
                    acm={'encoder.layers.encoder_layer_0.mlp': dict(num_learners=4, learner_dim=4, budget_share=0.9),
                         'encoder.layers.encoder_layer_1.mlp': dict(num_learners=4, learner_dim=4, budget_share=0.3)})
    budgets = layer_budgets(cfg, torch.tensor([0.2, 0.5]), 2)
    b0, b1 = budgets['encoder.layers.encoder_layer_0.mlp'], budgets['encoder.layers.encoder_layer_1.mlp']
    torch.testing.assert_close((b0 + b1) / 2, torch.tensor([0.2, 0.5], dtype=torch.float64))
    torch.testing.assert_close(b0 / b1, torch.tensor([3.0, 3.0], dtype=torch.float64))
    model = VisionTransformer(cfg)
    torch.manual_seed(0)
    _, choices = model(torch.randn(2, 1, 8, 8), mode='cap', beta=torch.tensor([0.2, 0.5]))
    assert (compute_fraction(cfg, choices, 2) <= torch.tensor([0.2, 0.5], dtype=torch.float64) + 1e-12).all()
