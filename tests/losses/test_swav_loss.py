"""RoB-SwAV loss vs an explicit-loop float64 reference; the queue joins Sinkhorn once full and is checkpointed."""

from __future__ import annotations

import pytest
import torch

from rob_ray.losses import SwavLoss
from tests.losses.reference import cross_entropy, pairs, rows, sinkhorn, softmax


def _reference(student, teacher, g, v, num_global, pairing, eps, iters, tau, batch):
    t_rows, s_rows = rows(teacher), rows(student)
    codes = [sinkhorn(t_rows[i * batch:(i + 1) * batch], eps, iters) for i in range(g)]
    terms = []
    for i, j in pairs(g, v, num_global, pairing):
        per_sample = [cross_entropy(codes[i][b], s_rows[j * batch + b], tau) for b in range(batch)]
        terms.append(sum(per_sample) / batch)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("pairing", ["same_view", "swapped"])
@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("iters", [0, 3])
def test_matches_loop_reference(pairing, g, iters):
    gen = torch.Generator().manual_seed(10 * g + iters)
    batch, v, k, num_global = 3, 5, 7, 2
    teacher = torch.nn.functional.normalize(torch.randn(g * batch, k, generator=gen), dim=1)
    student = torch.randn(v * batch, k, generator=gen)
    loss = SwavLoss(k, epsilon=0.05, sinkhorn_iterations=iters, student_temp=0.1, pairing=pairing,
                    num_teacher_views=g)
    out = loss(student, teacher, num_teacher_views=g, num_global=num_global)
    want = _reference(student, teacher, g, v, num_global, pairing, 0.05, iters, 0.1, batch)
    assert abs(float(out["loss"]) - want) < 1e-4 * max(1.0, abs(want))
    assert out["teacher_probs"].shape == (g * batch, k) and out["student_log_probs"].shape == (v * batch, k)


def test_gradient_reaches_student_only():
    teacher = torch.randn(4, 5, requires_grad=True)
    student = torch.randn(6, 5, requires_grad=True)
    SwavLoss(5, num_teacher_views=2)(student, teacher, num_teacher_views=2, num_global=2)["loss"].backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


def test_queue_joins_sinkhorn_once_full_and_is_in_state_dict():
    gen = torch.Generator().manual_seed(0)
    batch, k = 2, 4
    loss = SwavLoss(k, epsilon=0.05, sinkhorn_iterations=3, queue_length=4, num_teacher_views=1)
    batches = [torch.randn(batch, k, generator=gen) for _ in range(4)]
    student = torch.randn(batch, k, generator=gen)
    codes = [loss(student, t, num_teacher_views=1, num_global=1)["teacher_probs"] for t in batches]
    # Steps 0 and 1 fill the queue: plain per-batch Sinkhorn.
    for step in (0, 1):
        want = torch.tensor(sinkhorn(rows(batches[step]), 0.05, 3), dtype=torch.float64)
        torch.testing.assert_close(codes[step].double(), want, rtol=1e-5, atol=1e-6)
    # Step 2: the queue holds batches 1 and 0 (newest first); Sinkhorn runs over queue + batch.
    joint = rows(torch.cat([batches[1], batches[0], batches[2]]))
    want = torch.tensor(sinkhorn(joint, 0.05, 3)[-batch:], dtype=torch.float64)
    torch.testing.assert_close(codes[2].double(), want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(codes[2].double(), torch.tensor(sinkhorn(rows(batches[2]), 0.05, 3), dtype=torch.float64))
    state = loss.state_dict()
    torch.testing.assert_close(state["queue"][0], torch.cat([batches[3], batches[2]]))
    fresh = SwavLoss(k, epsilon=0.05, sinkhorn_iterations=3, queue_length=4, num_teacher_views=1)
    fresh.load_state_dict(state)
    nxt = torch.randn(batch, k, generator=gen)
    torch.testing.assert_close(fresh(student, nxt, num_teacher_views=1, num_global=1)["teacher_probs"],
                               loss(student, nxt, num_teacher_views=1, num_global=1)["teacher_probs"])


def test_zero_iterations_target_is_softmax_of_scores_over_eps():
    teacher = torch.randn(3, 6)
    out = SwavLoss(6, epsilon=0.2, sinkhorn_iterations=0, num_teacher_views=1)(torch.randn(6, 6), teacher,
                                                                               num_teacher_views=1, num_global=1)
    want = torch.tensor([softmax(r, 0.2) for r in rows(teacher)], dtype=torch.float64)
    torch.testing.assert_close(out["teacher_probs"].double(), want, rtol=1e-5, atol=1e-7)


def test_shape_errors_are_explicit():
    with pytest.raises(ValueError, match="prototypes"):
        SwavLoss(5, num_teacher_views=1)(torch.randn(4, 6), torch.randn(2, 5), num_teacher_views=1, num_global=1)
    with pytest.raises(ValueError, match="multiple of 2 views"):
        SwavLoss(5, num_teacher_views=2)(torch.randn(4, 5), torch.randn(3, 5), num_teacher_views=2, num_global=2)
