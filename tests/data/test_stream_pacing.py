"""Ray Data's scheduling loop is paced in the training worker (it would spin while backpressured)."""

import numpy as np
import pytest

from rob_ray.data.stream import pace_streaming_executor, paced, scheduling_period


class FakeClock:
    def __init__(self) -> None:
        self.now, self.slept = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_paced_sleeps_out_the_rest_of_the_period_and_passes_results_through():
    clock = FakeClock()
    calls = []

    def step(x, work):
        calls.append(x)
        clock.now += work
        return x * 2

    run = paced(step, 0.01, clock=clock, sleep=clock.sleep)
    assert run(3, 0.004) == 6  # 4 ms of work: sleeps the other 6
    assert run(4, 0.05) == 8  # longer than the period: no sleep
    assert calls == [3, 4]
    assert len(clock.slept) == 1 and abs(clock.slept[0] - 0.006) < 1e-12
    assert abs(clock.now - 0.06) < 1e-12


def test_paced_still_paces_when_the_step_raises():
    clock = FakeClock()

    def boom():
        raise ValueError("x")

    run = paced(boom, 0.01, clock=clock, sleep=clock.sleep)
    with pytest.raises(ValueError):
        run()
    assert clock.slept == [0.01]


def test_paced_asks_a_period_function_after_the_step_with_the_call_arguments():
    clock = FakeClock()
    seen = []

    def step(owner, work):
        clock.now += work
        owner["fed"] = not owner["fed"]  # the step changes the state the period depends on

    def period(owner, work):
        seen.append(owner["fed"])
        return 0.1 if owner["fed"] else 0.01

    run = paced(step, period, clock=clock, sleep=clock.sleep)
    owner = {"fed": False}
    run(owner, 0.002)  # now fed: sleeps 98 ms
    run(owner, 0.002)  # now starved: sleeps 8 ms
    assert seen == [True, False]
    assert [round(s, 9) for s in clock.slept] == [0.098, 0.008]


class FakeExecutor:
    def __init__(self, idling) -> None:
        self.idling = idling

    def _consumer_idling(self) -> bool:
        if isinstance(self.idling, Exception):
            raise self.idling
        return self.idling


def test_scheduling_period_is_short_only_while_the_consumer_waits():
    assert scheduling_period(FakeExecutor(True), "topology", starved_s=0.01, fed_s=0.1) == 0.01
    assert scheduling_period(FakeExecutor(False), "topology", starved_s=0.01, fed_s=0.1) == 0.1
    # Ray's internals changed or failed: fall back to the short period (never starve the step)
    assert scheduling_period(object(), "topology", starved_s=0.01, fed_s=0.1) == 0.01
    assert scheduling_period(FakeExecutor(RuntimeError("x")), starved_s=0.01, fed_s=0.1) == 0.01


def test_ray_still_has_the_consumer_check_the_pacing_reads():
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    assert callable(getattr(StreamingExecutor, "_consumer_idling", None))


def test_the_streaming_executor_is_wrapped_once():
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    assert pace_streaming_executor() and pace_streaming_executor()
    step = StreamingExecutor._scheduling_loop_step
    assert step.rob_ray_paced and not getattr(step.__wrapped__, "rob_ray_paced", False)


@pytest.mark.parametrize("crops_on", ["data_actors", "worker"])
def test_sample_bytes_matches_what_the_mapper_ships(small_folder, crops_on):
    """`data.max_batches_ahead` becomes an object-store cap of batches x `sample_bytes`: it must count a
    real mapped batch's bytes (never fewer), or the cap would hold fewer batches than it says."""
    from rob_ray.data import MultiCropMapper, SampleSchedule, scan_images
    from rob_ray.data.policy import CropPolicy
    from rob_ray.data.stream import sample_bytes

    table = scan_images(small_folder)
    policy = CropPolicy(global_size=32, local_size=16, num_local=2, crops_on=crops_on, image_size=96)
    batch = next(MultiCropMapper(table, policy, SampleSchedule(len(table), 1, 8, 1), rank=0).iter_local(0, 1))
    shipped = sum(np.asarray(v).nbytes for v in batch.values()) / 8
    assert shipped <= sample_bytes(policy) <= shipped + 64
