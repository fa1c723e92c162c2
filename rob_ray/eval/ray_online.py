"""Online evaluation on an actor of its own (`eval.online_knn_mode=actor`; the Ray side).

The async evaluator (`rob_ray.eval.background`) evaluates in a thread of rank 0, on rank 0's device and
CPUs. Here the evaluation runs in one Ray actor with its own resources (`eval.actor_cpus`,
`eval.actor_gpus`): it decodes the held-out images once, holds one copy of each student's model, and
runs the same `EpochEvaluator._compute` on the weights rank 0 sends it (a CPU state_dict put into
Ray's object store at the evaluation step, while training waits only for that copy). The reporting
protocol is the async one: at most one evaluation in flight per student, polled at logging steps
(`ray.wait(timeout=0)`), reported with `eval_step`, broadcast to every rank, the last step waits; the
best checkpoint is written on rank 0 from the evaluated weights (taken back from the object store).

Placement: Ray Train V2 starts its workers in a placement group (`PlacementGroupSchedulingStrategy`
without `placement_group_capture_child_tasks`, ray/train/v2/_internal/execution/worker_group/
worker_group.py), so an actor a worker starts is not captured by it; the actor is still created with
`scheduling_strategy="DEFAULT"`, which Ray documents as disabling any placement group capture (a Tune
trial's group, for one). It is not detached: Ray ends it with its owner, rank 0's worker process, or
when every handle is gone; an elastic restart's new rank 0 starts a new one. The launch plan counts
its resources (`rob_ray.train.plan`).

The student's model is shipped once per student (a CPU copy of the module the training code built
through the registry), not rebuilt from the config in the actor: a student's head width comes from
its teacher (prototypes, embedding width), and building a pretrained teacher there would cost a
download and its memory for nothing. torch refuses to pickle a module with parametrizations (DINO's
weight-normed last layer), so the copy has them folded into plain weights
(`remove_parametrizations(leave_parametrized=True)`), and each evaluation sends the weights in that
form: the parametrized attribute (`last_layer.weight`) is what the forward computes anyway. The best
checkpoint gets the student's own state_dict (parametrized keys, as every checkpoint).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import ray
import torch
from torch import nn
from torch.nn.utils import parametrize

from rob_ray.errors import ConfigError
from rob_ray.eval.background import AsyncEpochEvaluator
from rob_ray.eval.online import EpochEvaluator

__all__ = ["ActorEpochEvaluator", "OnlineEvalActor", "plain_copy", "plain_state", "start_eval_actor"]


class OnlineEvalActor:
    """Holds the decoded held-out images and one model per student; evaluates sent weights.

    Args: `eval_cfg` (the run's `eval` section, a dict), the evaluator's settings (as `EpochEvaluator`),
    `threads`: torch intra-op threads on CPU.
    """

    def __init__(self, eval_cfg: dict[str, Any], *, mean: tuple[float, ...], std: tuple[float, ...], size: int,
                 steps_per_epoch: int, end_step: int, channels_last: bool, batch_size: int, threads: int) -> None:
        from rob_ray.config import EvalConfig

        torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
        self.channels_last = channels_last
        self.evaluator = EpochEvaluator(EvalConfig.model_validate(eval_cfg), rank=0, world_size=1, device=self.device,
                                        mean=mean, std=std, size=size, steps_per_epoch=steps_per_epoch,
                                        end_step=end_step, channels_last=channels_last, batch_size=batch_size)
        self.models: dict[str, nn.Module] = {}

    def ready(self) -> int:
        """Images held (bank + queries): returns once the actor has decoded them."""
        return int(self.evaluator.bank[0].shape[0] + self.evaluator.queries[0].shape[0])

    def add_student(self, key: str, model: nn.Module) -> None:
        model = model.to(self.device).requires_grad_(False).eval()
        self.models[key] = model.to(memory_format=torch.channels_last) if self.channels_last else model

    def evaluate(self, key: str, state: dict[str, torch.Tensor], run_knn: bool) -> list[float]:
        """`EpochEvaluator._compute` of student `key` with the weights `state`."""
        model = self.models[key]
        with torch.no_grad():
            model.load_state_dict(state)
        return self.evaluator._compute(model, None, run_knn)


def start_eval_actor(eval_cfg: Any, **settings: Any) -> Any:
    """The evaluation actor (a handle), on `eval.actor_cpus` / `eval.actor_gpus`, outside any placement group."""
    if not ray.is_initialized():
        raise ConfigError("config error: eval.online_knn_mode=actor needs a run under Ray (rob_ray train, or a Ray "
                          "Train worker); use eval.online_knn_mode=async without Ray")
    cls = ray.remote(OnlineEvalActor)
    return cls.options(num_cpus=eval_cfg.actor_cpus, num_gpus=eval_cfg.actor_gpus, scheduling_strategy="DEFAULT",
                       max_restarts=0).remote(eval_cfg.model_dump(), threads=max(1, math.floor(eval_cfg.actor_cpus)),
                                              **settings)


def plain_copy(student: nn.Module) -> nn.Module:
    """A CPU copy of `student` with every parametrization folded into a plain tensor (picklable)."""
    out = copy.deepcopy(student).cpu()
    for module in list(out.modules()):  # removing a parametrization changes the module tree
        if parametrize.is_parametrized(module):
            # The copy shares its `Parametrized<cls>` class with the student, and removing a parametrization
            # deletes the property from that class: the copy gets a class of its own first.
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return out


def plain_state(student: nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    """`student`'s weights under the keys of its `plain_copy` (a parametrized tensor as computed), on CPU."""
    out = {}
    with torch.no_grad():
        for key in keys:
            owner, _, name = key.rpartition(".")
            out[key] = getattr(student.get_submodule(owner) if owner else student, name).detach().cpu()
    return out


class _Pending:
    """One evaluation in flight on the actor; `done()` polls without waiting, `result()` waits."""

    def __init__(self, owner: ActorEpochEvaluator, ref: Any, state_ref: Any, step: int, run_knn: bool) -> None:
        self.owner, self.ref, self.state_ref, self.step, self.run_knn = owner, ref, state_ref, step, run_knn

    def done(self) -> bool:
        ready, _ = ray.wait([self.ref], timeout=0)
        return bool(ready)

    def result(self) -> tuple[int, bool, list[float]]:
        values = ray.get(self.ref)
        self.owner._finished(self.step, self.run_knn, values, self.state_ref)
        return self.step, self.run_knn, values


class ActorEpochEvaluator(AsyncEpochEvaluator):
    """`AsyncEpochEvaluator` whose evaluations run on the evaluation actor (rank 0 talks to it).

    Args (beyond `AsyncEpochEvaluator`'s): `shared`, one dict per training loop holding the actor
    (the students of a multi-student run share it); `key`, this student's name on the actor.
    """

    _in_thread = False

    def __init__(self, eval_cfg: Any, *, shared: dict[str, Any], key: str = "student", **kwargs: Any) -> None:
        super().__init__(eval_cfg, hold_images=False, **kwargs)
        self.key, self._shared, self._keys = key, shared, None
        self.actor = None
        if self.rank == 0:
            if "actor" not in shared:
                shared["actor"] = start_eval_actor(
                    eval_cfg, mean=tuple(self.mean), std=tuple(self.std), size=kwargs["size"],
                    steps_per_epoch=self.spe, end_step=self.end, channels_last=self.channels_last,
                    batch_size=self.batch_size)
                shared["users"] = 0
            shared["users"] += 1
            self.actor = shared["actor"]

    def _start(self, done: int, student: nn.Module, probe: torch.Tensor, run_knn: bool) -> _Pending:
        if self._keys is None:  # the architecture once; afterwards only weights
            model = plain_copy(student)
            self._keys = list(model.state_dict())
            self.actor.add_student.remote(self.key, model)
        # Serialised into the object store here, while training waits: later steps cannot change them.
        weights = ray.put(plain_state(student, self._keys))
        state_ref = None
        if self.best is not None:
            state_ref = ray.put({k: v.detach().cpu() for k, v in student.state_dict().items()})
        return _Pending(self, self.actor.evaluate.remote(self.key, weights, run_knn), state_ref, done, run_knn)

    def _finished(self, step: int, run_knn: bool, values: list[float], state_ref: Any) -> None:
        knn = values[0]
        print(f"[rob_ray] online evaluation of step {step} done (eval actor)" +
              (f": k-NN top-1 {knn:.2f} %" if run_knn and math.isfinite(knn) else ""), flush=True)
        if self.best is not None:
            metrics = self._metrics(step, run_knn, values, warn=False)
            self.best.update(step, {"student": ray.get(state_ref), "step": step, "config": self.config}, metrics)

    def close(self) -> None:
        super().close()
        if self.actor is not None:
            self.actor, self._shared["users"] = None, self._shared["users"] - 1
            if self._shared["users"] == 0:  # the last student done: free the actor's resources now
                ray.kill(self._shared.pop("actor"))
