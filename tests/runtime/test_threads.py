"""The thread governor: free cores from CPU time, hysteresis, pinning, and the real /proc reader."""

from __future__ import annotations

from pathlib import Path

from edge_qwen.runtime.engine.threads import CpuSample, ThreadGovernor, read_cpu_sample


class FakeCpu:
    """Cumulative busy/own CPU seconds that advance by what each phase says per second."""

    def __init__(self, n_cpus: int = 2) -> None:
        self.n_cpus = n_cpus
        self.busy = self.own = 0.0
        self.reads = 0

    def advance(self, seconds: float, ours: float, others: float) -> None:
        self.own += ours * seconds
        self.busy += (ours + others) * seconds

    def __call__(self) -> CpuSample:
        self.reads += 1
        return CpuSample(self.busy, self.own, self.n_cpus)


def _run(gov: ThreadGovernor, cpu: FakeCpu, start: float, seconds: float, others: float) -> list[int]:
    """Step every 0.05 s for ``seconds``; we use min(our threads, what the others leave) cores."""
    counts, now = [], start
    while now < start + seconds - 1e-9:
        n = gov.threads(now)
        counts.append(n)
        ours = min(float(n), cpu.n_cpus * n / (n + others)) if others else float(n)
        cpu.advance(0.05, ours, min(others, cpu.n_cpus - ours))
        now += 0.05
    return counts


def test_idle_machine_keeps_every_thread() -> None:
    cpu = FakeCpu()
    gov = ThreadGovernor(2, sampler=cpu)
    assert set(_run(gov, cpu, 0.0, 5.0, others=0.0)) == {2}
    assert gov.others_cores == 0.0


def test_one_busy_competitor_drops_to_one_thread_and_back() -> None:
    cpu = FakeCpu()
    gov = ThreadGovernor(2, sampler=cpu)
    _run(gov, cpu, 0.0, 1.0, others=0.0)
    busy = _run(gov, cpu, 1.0, 3.0, others=1.0)
    assert busy[0] == 2 and busy[-1] == 1
    assert busy.index(1) * 0.05 <= 1.6  # about two readings after the competitor starts
    assert 0.6 < gov.others_cores <= 1.0
    calm = _run(gov, cpu, 4.0, 3.0, others=0.0)
    assert calm[-1] == 2


def test_light_background_load_does_not_flap() -> None:
    cpu = FakeCpu()
    gov = ThreadGovernor(2, sampler=cpu)
    assert set(_run(gov, cpu, 0.0, 5.0, others=0.3)) == {2}  # 1.7 cores free: stay at 2
    gov = ThreadGovernor(2, sampler=cpu)
    gov._current = 1
    assert set(_run(gov, cpu, 5.0, 5.0, others=0.4)) == {1}  # 1.6 free is inside the band at 1


def test_a_single_spike_is_not_enough() -> None:
    cpu = FakeCpu()
    gov = ThreadGovernor(2, sampler=cpu)
    _run(gov, cpu, 0.0, 1.0, others=0.0)
    spike = _run(gov, cpu, 1.0, 0.5, others=1.5)  # one interval of load
    after = _run(gov, cpu, 1.5, 2.0, others=0.0)
    assert set(spike) | set(after) == {2}


def test_many_cores_drop_by_what_others_take() -> None:
    cpu = FakeCpu(n_cpus=8)
    gov = ThreadGovernor(8, sampler=cpu)
    counts = _run(gov, cpu, 0.0, 4.0, others=3.0)
    assert counts[0] == 8 and 4 <= counts[-1] <= 6


def test_pinned_and_disabled_never_read() -> None:
    cpu = FakeCpu()
    assert {ThreadGovernor(2, pinned=1, sampler=cpu).threads(t / 10) for t in range(50)} == {1}
    assert {ThreadGovernor(4, sampler=None).threads(t / 10) for t in range(50)} == {4}
    assert cpu.reads == 0


def test_reads_are_rate_limited() -> None:
    cpu = FakeCpu()
    gov = ThreadGovernor(2, sampler=cpu, interval=0.5)
    for i in range(1000):  # 1000 steps in 2 s
        gov.threads(i * 0.002)
    assert cpu.reads == 4


def test_no_proc_means_the_maximum() -> None:
    gov = ThreadGovernor(3, sampler=lambda: None)
    assert {gov.threads(t / 2) for t in range(10)} == {3}


def test_read_cpu_sample_from_a_fake_proc(tmp_path: Path) -> None:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/stat").write_text(
        "cpu  900 0 300 5000 10 0 0 0 0 0\n"
        "cpu0 400 0 100 2500 5 0 0 20 0 0\n"
        "cpu1 500 0 200 2500 5 10 5 0 0 0\n"
        "intr 1\nprocs_running 3\n"
    )
    # pid (comm with ) spaces) state ppid ... utime=14th stime=15th field
    fields = ["S"] + ["0"] * 10 + ["150", "50"] + ["0"] * 30
    (tmp_path / "proc/self/stat").write_text("42 (py thon) x) " + " ".join(fields) + "\n")
    sample = read_cpu_sample(cpus=[0, 1], root=tmp_path)
    assert sample is not None and sample.n_cpus == 2
    tick = 100  # SC_CLK_TCK on Linux
    assert abs(sample.busy_s - (400 + 100 + 20 + 500 + 200 + 10 + 5) / tick) < 1e-9
    assert abs(sample.own_s - 200 / tick) < 1e-9
    only0 = read_cpu_sample(cpus=[0], root=tmp_path)
    assert only0 is not None and only0.n_cpus == 1
    assert read_cpu_sample(root=tmp_path / "missing") is None


def test_the_real_proc_reader_sees_this_process() -> None:
    first = read_cpu_sample()
    assert first is not None and first.n_cpus >= 1
    sum(i * i for i in range(300_000))  # burn a little CPU
    second = read_cpu_sample()
    assert second is not None and second.own_s >= first.own_s and second.busy_s >= first.busy_s
