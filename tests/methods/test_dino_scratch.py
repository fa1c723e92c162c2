"""SSL-from-scratch (original DINO): EMA teacher, centre and temperature against closed forms;
the state (EMA weights, centre) is in the method's state_dict."""

from __future__ import annotations

import math

import numpy as np
import torch

from rob_ray.config import load_config
from rob_ray.methods import Views, build_method, build_models
from rob_ray.train.schedules import cosine_schedule, teacher_temp_schedule

TINY = ["method.name=dino_scratch", "method.out_dim=16", "student.arch=test_resnet", "student.head.hidden_dim=32",
        "student.head.bottleneck_dim=8", "augment.global_size=32", "augment.local_size=16", "augment.num_local=2"]


def test_momentum_schedule_closed_form():
    total = 50
    m = cosine_schedule(0.996, 1.0, total)
    for t in range(total):
        assert math.isclose(m[t], 1 - (1 - 0.996) * (math.cos(math.pi * t / total) + 1) / 2, rel_tol=0, abs_tol=1e-12)


def test_teacher_temperature_closed_form():
    spe, warm, total = 3, 4, 30
    temps = teacher_temp_schedule(0.04, 0.07, warm, total, spe)
    for step in range(total):
        e = step // spe
        want = 0.04 + (0.07 - 0.04) * e / (warm - 1) if e < warm else 0.07
        assert math.isclose(temps[step], want, abs_tol=1e-12)
    assert np.all(teacher_temp_schedule(0.04, 0.07, 0, 5, 1) == 0.07)


def _setup(extra=()):
    cfg = load_config(None, [*TINY, *extra])
    torch.manual_seed(0)
    teacher, student = build_models(cfg)
    method = build_method(cfg.method, teacher, student)
    method.set_schedule(total_steps=20, steps_per_epoch=2)
    return cfg, teacher, student, method


def _views(b=4):
    g = torch.Generator().manual_seed(1)
    return Views(torch.randn(2 * b, 3, 32, 32, generator=g), torch.randn(2 * b, 3, 16, 16, generator=g),
                 torch.full((b,), -1), b, 2)


def test_teacher_starts_as_student_and_follows_the_ema_closed_form():
    _, teacher, student, method = _setup()
    for pt, ps in zip(teacher.net.parameters(), student.parameters(), strict=True):
        assert torch.equal(pt, ps) and not pt.requires_grad
    before = [p.clone() for p in teacher.net.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    step = 7
    method.after_optimizer_step(step)
    m = 1 - (1 - 0.996) * (math.cos(math.pi * step / 20) + 1) / 2
    for pt, b0, ps in zip(teacher.net.parameters(), before, student.parameters(), strict=True):
        torch.testing.assert_close(pt, m * b0 + (1 - m) * ps)


def test_centre_and_scheduled_temperature_in_the_loss():
    _, teacher, student, method = _setup(["method.warmup_teacher_temp_epochs=4"])
    views = _views()
    step = 5  # epoch 2 of a 4-epoch warm-up: 0.04 + 0.03 * 2 / 3 = 0.06
    with torch.no_grad():
        t_logits = teacher(views.globals_)
    out = method(views, teacher, student, step)
    torch.testing.assert_close(out.teacher_probs, torch.softmax(t_logits / 0.06, dim=-1))  # centre still 0
    torch.testing.assert_close(method.loss.center, 0.1 * t_logits.mean(0, keepdim=True))  # 0.9 * 0 + 0.1 * mean
    out2 = method(views, teacher, student, 19)  # constant 0.07 after warm-up, centred by the updated centre
    centre = method.loss.center.clone()
    with torch.no_grad():
        t2 = teacher(views.globals_)
    torch.testing.assert_close(out2.teacher_probs, torch.softmax((t2 - 0.1 * t_logits.mean(0, keepdim=True)) / 0.07, -1))
    torch.testing.assert_close(centre, 0.9 * 0.1 * t_logits.mean(0, keepdim=True) + 0.1 * t2.mean(0, keepdim=True))


def test_swapped_pairs_and_state_round_trip():
    _, teacher, student, method = _setup()
    assert method.loss.pairing == "swapped"
    method(_views(), teacher, student, 0)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(0.5)
    method.after_optimizer_step(0)
    state = method.state_dict()
    assert any(k.startswith("ema.net.") for k in state) and "loss.center" in state
    _, _, _, fresh = _setup()
    fresh.load_state_dict(state)
    for a, b in zip(fresh.ema.net.parameters(), method.ema.net.parameters(), strict=True):
        assert torch.equal(a, b)
