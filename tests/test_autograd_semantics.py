"""The PyTorch autograd facts freezetune relies on, pinned on PyTorch's autograd tutorial example.

If an upgrade of torch changes any of these, freezing (requires_grad=False),
evaluation (no_grad / inference_mode) or the optimizer set-up must be rechecked.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def tutorial_example(w_requires_grad: bool = True, b_requires_grad: bool = True):
    torch.manual_seed(0)
    x = torch.ones(5)  # input tensor
    y = torch.zeros(3)  # expected output
    w = torch.randn(5, 3, requires_grad=w_requires_grad)
    b = torch.randn(3, requires_grad=b_requires_grad)
    z = torch.matmul(x, w) + b
    loss = F.binary_cross_entropy_with_logits(z, y)
    return x, y, w, b, z, loss


def test_grad_fn_names_the_last_operation() -> None:
    _, _, _, _, z, loss = tutorial_example()
    assert type(z.grad_fn).__name__ == "AddBackward0"
    assert type(loss.grad_fn).__name__ == "BinaryCrossEntropyWithLogitsBackward0"
    assert z.requires_grad and loss.requires_grad
    assert not z.is_leaf and not loss.is_leaf


def test_leaves_have_no_grad_fn() -> None:
    x, y, w, b, _, _ = tutorial_example()
    for t in (x, y, w, b):
        assert t.grad_fn is None
        assert t.is_leaf
    assert w.requires_grad and b.requires_grad
    assert not x.requires_grad and not y.requires_grad


def test_backward_gives_analytic_gradients() -> None:
    x, y, w, b, z, loss = tutorial_example()
    assert w.grad is None and b.grad is None  # nothing before backward
    loss.backward()
    # d mean(BCE(z, y)) / dz = (sigmoid(z) - y) / n, n = 3 outputs.
    dz = (torch.sigmoid(z.detach()) - y) / 3
    assert w.grad.shape == w.shape and b.grad.shape == b.shape
    assert torch.allclose(w.grad, torch.outer(x, torch.sigmoid(z.detach()) - y) / 3)
    assert torch.allclose(b.grad, dz)
    assert x.grad is None  # inputs that do not require grad get none
    # Non-leaf tensors do not keep .grad (a warning is expected when reading it).
    with pytest.warns(UserWarning):
        assert z.grad is None


def test_second_backward_without_retain_graph_raises() -> None:
    *_, loss = tutorial_example()
    loss.backward()
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()


def test_retain_graph_allows_second_backward_and_grads_accumulate() -> None:
    _, _, w, b, _, loss = tutorial_example()
    loss.backward(retain_graph=True)
    w1, b1 = w.grad.clone(), b.grad.clone()
    loss.backward()
    assert torch.allclose(w.grad, 2 * w1)
    assert torch.allclose(b.grad, 2 * b1)


def test_no_grad_records_no_graph() -> None:
    x, _, w, b, _, _ = tutorial_example()
    with torch.no_grad():
        z = torch.matmul(x, w) + b
    assert z.requires_grad is False
    assert z.grad_fn is None
    assert z.is_leaf
    assert torch.is_grad_enabled()  # restored on exit


def test_detach_shares_storage_and_drops_grad() -> None:
    *_, z, _ = tutorial_example()
    z_det = z.detach()
    assert z_det.requires_grad is False
    assert z_det.grad_fn is None
    assert z_det.data_ptr() == z.data_ptr()
    # Shared storage: an in-place edit of the detached tensor shows in z.
    with torch.no_grad():
        z_det[0] = 123.0
    assert z[0].item() == 123.0


def test_inference_mode_gives_inference_tensors() -> None:
    x, _, w, b, _, _ = tutorial_example()
    with torch.inference_mode():
        z = torch.matmul(x, w) + b
    assert z.is_inference()
    assert z.requires_grad is False and z.grad_fn is None
    assert not w.is_inference()
    # An inference tensor cannot be saved for backward outside inference mode.
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        (w * z.unsqueeze(0)).sum().backward()


def test_frozen_prefix_records_no_graph() -> None:
    # Input and weights all with requires_grad=False: no node is recorded, which is
    # why the frozen prefix of a network costs no autograd memory.
    x, _, w, b, z, _ = tutorial_example(w_requires_grad=False, b_requires_grad=False)
    assert not x.requires_grad and not w.requires_grad and not b.requires_grad
    assert z.grad_fn is None
    assert z.requires_grad is False
    assert torch.is_grad_enabled()  # without any no_grad() context
    # A trainable layer after the frozen prefix starts the graph there.
    head = torch.randn(3, 2, requires_grad=True)
    out = torch.matmul(z, head)
    assert out.grad_fn is not None and out.requires_grad
    out.sum().backward()
    assert w.grad is None and b.grad is None
    assert head.grad is not None


def test_frozen_weight_gets_no_grad_while_bias_does() -> None:
    x, y, w, b, z, loss = tutorial_example(w_requires_grad=False)
    assert z.grad_fn is not None  # b still requires grad
    loss.backward()
    assert w.grad is None
    assert b.grad is not None
    assert torch.allclose(b.grad, (torch.sigmoid(z.detach()) - y) / 3)


def test_loss_with_nothing_trainable_cannot_backward() -> None:
    *_, loss = tutorial_example(w_requires_grad=False, b_requires_grad=False)
    assert loss.grad_fn is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        loss.backward()


# --------------------------------------------------------------------------- optimizer


def test_zero_grad_set_to_none() -> None:
    _, _, w, b, _, loss = tutorial_example()
    opt = torch.optim.SGD([w, b], lr=0.1)
    loss.backward()
    assert w.grad is not None
    opt.zero_grad(set_to_none=True)
    assert w.grad is None and b.grad is None


def test_zero_grad_set_to_none_false_keeps_zero_tensors() -> None:
    _, _, w, b, _, loss = tutorial_example()
    opt = torch.optim.SGD([w, b], lr=0.1)
    loss.backward()
    opt.zero_grad(set_to_none=False)
    assert w.grad is not None and torch.count_nonzero(w.grad) == 0


def test_sgd_leaves_parameters_outside_it_bitwise_unchanged() -> None:
    torch.manual_seed(0)
    inside = torch.nn.Parameter(torch.randn(4, 3))
    outside = torch.nn.Parameter(torch.randn(4, 3))
    before = outside.detach().clone()
    opt = torch.optim.SGD([inside], lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        (inside * outside).sum().backward()
        assert outside.grad is not None  # it has a gradient, the optimizer just does not own it
        opt.step()
    assert torch.equal(outside.detach(), before)


def test_sgd_weight_decay_moves_a_parameter_with_zero_grad() -> None:
    # A frozen parameter left in the optimizer with a zero (not None) gradient
    # still moves: weight decay adds wd * p to its gradient.
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 3))
    before = p.detach().clone()
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert not torch.equal(p.detach(), before)
    assert torch.allclose(p.detach(), before * (1 - 0.1 * 0.1))


def test_sgd_momentum_moves_a_parameter_after_its_grad_becomes_zero() -> None:
    # Freezing mid-run but keeping the parameter in the optimizer: the momentum
    # buffer keeps moving it even with zero gradient and no weight decay.
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3)
    opt.step()
    after_first = p.detach().clone()
    p.grad = torch.zeros_like(p)
    opt.step()
    assert not torch.equal(p.detach(), after_first)
    assert torch.allclose(p.detach(), after_first - 0.1 * 0.9)


def test_sgd_skips_a_parameter_whose_grad_is_none() -> None:
    # With set_to_none=True a parameter that gets no gradient is skipped entirely,
    # weight decay and momentum included.
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    before = p.detach().clone()
    assert p.grad is None
    opt.step()
    assert torch.equal(p.detach(), before)
