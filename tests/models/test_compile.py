"""The models under ``torch.compile(fullgraph=True)`` with its default backend, inductor: the loss and
every gradient equal eager's. Their noise (corruption, reparameterization) is seeded from torch's
generator; inductor draws its own random numbers unless ``fallback_random`` is set, as it does for
torch's own dropout, so the comparison sets it to get eager's draws."""
import pytest
import torch
import torch._inductor.config as inductor_config

from aefast.models import ConditionalVAE, ConvAutoencoder
from tests.models.test_properties import MODELS

COMPILED_MODELS = {**MODELS, "conv": lambda dims: ConvAutoencoder()}


def batch_for(kind: str, rows: int):
    if kind == "conv":
        return torch.rand(rows, 1, 28, 28)
    x = torch.rand(rows, 19)
    return (x, torch.randint(0, 3, (rows,))) if kind == "cvae" else x


def loss_and_grads(loss_function, model, batch):
    torch.manual_seed(1)
    loss = loss_function(batch)
    return loss.detach(), torch.autograd.grad(loss, list(model.parameters()))


@pytest.mark.parametrize("kind", list(COMPILED_MODELS))
def test_every_models_loss_compiles_fullgraph_with_inductor_and_equals_eager(kind):
    torch.manual_seed(0)
    model = COMPILED_MODELS[kind]([19, 7, 3])
    batch = batch_for(kind, 9)
    with inductor_config.patch(fallback_random=True):
        got = loss_and_grads(torch.compile(model.loss, fullgraph=True), model, batch)
    want = loss_and_grads(model.loss, model, batch)
    # fp32 sums of at most 19 terms a layer (a 3x3 conv's 9 x channels), fused in another order by
    # inductor: differences of a few ulps (6e-8 seen on losses near 1).
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-5)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("labels", [[0, 3, 1], [0, -1, 2]])
def test_compiled_conditional_vae_refuses_labels_out_of_range(labels):
    # Eager raises ValueError before any work; a fullgraph trace cannot branch on tensor values, so
    # the check goes in as a traced assert that raises when the step runs.
    model = ConditionalVAE([5, 4, 2], num_classes=3)
    x = torch.rand(3, 5)
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 3\)"):
        model.loss((x, torch.tensor(labels)))
    with pytest.raises(RuntimeError, match=r"labels must be integers in \[0, 3\)"):
        torch.compile(model.loss, fullgraph=True)((x, torch.tensor(labels)))
