"""Ray Data's scheduling loop is paced in the training worker (it would spin while backpressured)."""

import pytest

from rob_ray.data.stream import pace_streaming_executor, paced


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


def test_the_streaming_executor_is_wrapped_once():
    from ray.data._internal.execution.streaming_executor import StreamingExecutor

    assert pace_streaming_executor() and pace_streaming_executor()
    step = StreamingExecutor._scheduling_loop_step
    assert step.rob_ray_paced and not getattr(step.__wrapped__, "rob_ray_paced", False)
