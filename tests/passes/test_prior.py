"""Data-free input moments (tfx.passes.input_priors): the moments against closed forms and
Monte-Carlo samples of what they assume, the walk on exported and symbolically traced graphs,
and factorize without data decomposing with them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import fx, nn

import tfx
from tests.passes._models import bert_inputs, tiny_bert
from tests.zoo.models import ZOO
from tfx.cost._whiten import DAMPING
from tfx.passes import capture, find_sites
from tfx.passes._prior import activation_moments, input_priors


def _normal_cdf_pdf(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return 0.5 * (1 + torch.erf(a / math.sqrt(2))), torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)


@given(
    mean=st.floats(-4, 4, allow_nan=False),
    var=st.floats(1e-3, 16, allow_nan=False),
)
def test_relu_moments_match_the_closed_form(mean: float, var: float) -> None:
    """E relu(z) = mu Phi(a) + s phi(a), E relu(z)^2 = (mu^2 + s^2) Phi(a) + mu s phi(a),
    a = mu / s."""
    mu = torch.tensor([mean], dtype=torch.float64)
    v = torch.tensor([var], dtype=torch.float64)
    s = v.sqrt()
    cdf, pdf = _normal_cdf_pdf(mu / s)
    first, spread = activation_moments(torch.relu, mu, v)
    torch.testing.assert_close(first, mu * cdf + s * pdf, rtol=0, atol=1e-5 * float(s))
    second = (mu * mu + v) * cdf + mu * s * pdf
    torch.testing.assert_close(spread + first * first, second, rtol=0, atol=1e-5 * float(v + 1))


@pytest.mark.parametrize("fn", [F.gelu, torch.tanh, F.silu], ids=["gelu", "tanh", "silu"])
def test_smooth_activation_moments_match_a_fine_quadrature(fn) -> None:  # noqa: ANN001
    """Against a 2-million-point Riemann sum over [-40, 40] (float64)."""
    mu = torch.tensor([-3.0, -0.5, 0.0, 0.4, 2.5], dtype=torch.float64)
    v = torch.tensor([0.01, 1.0, 9.0, 0.3, 2.0], dtype=torch.float64)
    z = torch.linspace(-40, 40, 2_000_001, dtype=torch.float64)
    w = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) * (z[1] - z[0])
    values = fn(mu[:, None] + v.sqrt()[:, None] * z)
    expected_first, expected_second = values @ w, (values * values) @ w
    first, spread = activation_moments(fn, mu, v)
    torch.testing.assert_close(first, expected_first, rtol=0, atol=1e-9)
    torch.testing.assert_close(spread + first * first, expected_second, rtol=0, atol=1e-9)


def _randomize_norms(model: nn.Module) -> None:
    """Norm scales and shifts unlike their init (ones and zeros), so the checks can fail."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if type(module).__name__.endswith(("LayerNorm", "RMSNorm")) and weight is not None:
                weight.copy_(0.5 + torch.rand(weight.shape, generator=gen))
                if getattr(module, "bias", None) is not None:
                    module.bias.copy_(torch.randn(weight.shape, generator=gen) * 0.3)


def _priors(model: nn.Module, inputs: object) -> tuple[dict, list]:
    captured = capture(model, inputs)
    sites = find_sites(captured.gm, path=captured.path, kinds=("linear",))
    return input_priors(captured.gm, sites), sites


def test_layer_norm_fed_linears_get_its_affine_moment() -> None:
    model = tiny_bert().double()
    _randomize_norms(model)
    priors, sites = _priors(model, bert_inputs())
    layer = model.encoder.layer[0]

    def expected(norm: nn.LayerNorm) -> torch.Tensor:  # the diagonal of diag(g^2) + b b^T
        g, b = norm.weight.detach(), norm.bias.detach()
        return g * g + b * b

    qkv = [priors[f"encoder.layer.0.attention.self.{p}"] for p in ("query", "key", "value")]
    assert qkv[0] is qkv[1] is qkv[2]  # one input, one moment
    torch.testing.assert_close(qkv[0].covariance(), expected(model.embeddings.LayerNorm))
    torch.testing.assert_close(
        priors["encoder.layer.0.intermediate.dense"].covariance(),
        expected(layer.attention.output.LayerNorm),
    )
    # the pooler reads the first token's row of the last layer's output norm
    last = model.encoder.layer[-1].output.LayerNorm
    torch.testing.assert_close(priors["pooler.dense"].covariance(), expected(last))
    # the attention output is not explained (softmax-weighted values): no moment
    assert "encoder.layer.0.attention.output.dense" not in priors
    assert {s.name for s in sites if s.info.kind == "linear"} - set(priors) == {
        "encoder.layer.0.attention.output.dense"
    }


def test_feed_forward_output_moment_matches_samples_of_what_it_assumes() -> None:
    """The down projection's input gelu(W1 (gamma z + beta) + b1), z ~ N(0, I): its mean
    and per-coordinate second moment from 400k samples, against the propagated moment."""
    model = tiny_bert().double()
    _randomize_norms(model)
    priors, _ = _priors(model, bert_inputs())
    layer = model.encoder.layer[0]
    norm, up = layer.attention.output.LayerNorm, layer.intermediate.dense
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(400_000, 32, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        rows = F.gelu(up(z * norm.weight + norm.bias))
    prior = priors["encoder.layer.0.output.dense"].covariance()
    # E[h_i^2], the moment kept (Monte-Carlo error ~ 1e-2)
    torch.testing.assert_close(prior, rows.square().mean(0), rtol=2e-2, atol=1e-3)
    # and the propagated mean E[h_i] the walk computes on the way
    w, b = up.weight.detach(), up.bias.detach()
    g, beta = norm.weight.detach(), norm.bias.detach()
    first, _ = activation_moments(F.gelu, w @ beta + b, (w * w) @ (g * g))
    torch.testing.assert_close(first, rows.mean(0), rtol=2e-2, atol=2e-3)


def test_rms_norm_traced_into_its_ops_gives_the_scale_moment() -> None:
    model = ZOO["llama"].build().double()
    _randomize_norms(model)
    priors, _ = _priors(model, ZOO["llama"].inputs(2, 6))
    layer = model.model.layers[0]
    for name, norm in (
        ("self_attn.q_proj", layer.input_layernorm),
        ("mlp.up_proj", layer.post_attention_layernorm),
    ):
        g = norm.weight.detach()
        torch.testing.assert_close(priors[f"model.layers.0.{name}"].covariance(), g * g)
    # the gated product silu(gate) * up is not followed
    assert "model.layers.0.mlp.down_proj" not in priors


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(24)
        self.up = nn.Linear(24, 40)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.1)
        self.down = nn.Linear(40, 24)
        self.other = nn.Linear(24, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.drop(self.act(self.up(self.norm(x))))) + self.other(x)


def test_walk_follows_modules_of_a_symbolically_traced_graph() -> None:
    model = _Block().double().eval()
    _randomize_norms(model)
    gm = fx.symbolic_trace(model)
    sites = find_sites(gm, path="symbolic", kinds=("linear",))
    priors = input_priors(gm, sites)
    assert set(priors) == {"up", "down"}  # "other" reads the raw input
    g, b = model.norm.weight.detach(), model.norm.bias.detach()
    torch.testing.assert_close(priors["up"].covariance(), g * g + b * b)
    w, c = model.up.weight.detach(), model.up.bias.detach()
    first, spread = activation_moments(torch.relu, w @ b + c, (w * w) @ (g * g))
    expected = spread + first * first
    torch.testing.assert_close(priors["down"].covariance(), expected)


def test_factorize_without_data_decomposes_for_the_prior_moment() -> None:
    """The factorized up projection is [W L]_r L^-1 with L L^T the damped prior moment, and
    on inputs of the kind the moment assumes its output error is below plain SVD's."""
    torch.manual_seed(0)
    model = _Block().double().eval()
    _randomize_norms(model)
    example = (torch.randn(4, 24, dtype=torch.float64),)
    out = tfx.factorize(model, 0.6, example_inputs=example, forms=("svd",), progress=False)
    plan = out.tfx_plan
    assert any(n.startswith("no calibration data: 2 of 3 linear sites") for n in plan.notes)
    rank = next(c.rank for c in plan.choices if c.site == "up")
    assert rank is not None and rank < 24
    g, b = model.norm.weight.detach(), model.norm.bias.detach()
    moment = g * g + b * b  # the diagonal kept of diag(g^2) + b b^T
    root = torch.diag((moment + DAMPING * moment.mean()).sqrt())
    w = model.up.weight.detach()
    u, s, vh = torch.linalg.svd(w @ root)
    expected = (u[:, :rank] * s[:rank]) @ vh[:rank] @ torch.linalg.inv(root)
    got = _layer_matrix(out, "up", torch.eye(24, dtype=torch.float64))
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    # output error on LayerNorm-distributed rows: whitened factors against plain SVD factors
    rows = torch.randn(20_000, 24, dtype=torch.float64) * g + b
    u0, s0, vh0 = torch.linalg.svd(w)
    plain = (u0[:, :rank] * s0[:rank]) @ vh0[:rank]
    err = ((rows @ (got - w).T) ** 2).sum()
    err_plain = ((rows @ (plain - w).T) ** 2).sum()
    assert err < 0.9 * err_plain


def _layer_matrix(model: nn.Module, name: str, probe: torch.Tensor) -> torch.Tensor:
    """The weight a factorized linear applies: its response to the identity, bias removed."""
    layer = model.get_submodule(name)
    with torch.no_grad():
        zero = layer(torch.zeros(1, probe.shape[0], dtype=probe.dtype))
        return (layer(probe) - zero).T


def test_no_prior_without_a_normalization() -> None:
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).double()
    priors, sites = _priors(model, (torch.randn(3, 16, dtype=torch.float64),))
    assert priors == {} and len(sites) == 2
