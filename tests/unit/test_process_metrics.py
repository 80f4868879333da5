"""Process metrics of several workers: which pids count, read from a /proc tree."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.observability.metrics import WorkerProcessCollector

TICKS = os.sysconf("SC_CLK_TCK")


def fake_process(proc: Path, pid: int, ppid: int, ticks: int, rss_pages: int) -> None:
    """/proc/PID/stat (state, ppid, utime, stime, start, vsize, rss), limits and fds."""
    fields = ["S", str(ppid)] + ["0"] * 9 + [str(ticks), str(ticks)] + ["0"] * 6
    fields += ["100", "4096000", str(rss_pages)]
    (proc / str(pid) / "fd").mkdir(parents=True)
    (proc / str(pid) / "stat").write_text(f"{pid} (mail gate) " + " ".join(fields) + "\n")
    (proc / str(pid) / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max open files            1024                 4096                 files\n"
    )
    for fd in range(3):
        (proc / str(pid) / "fd" / str(fd)).touch()


def test_each_live_worker_by_pid_and_dead_ones_dropped(tmp_path: Path) -> None:
    proc, shared = tmp_path / "proc", tmp_path / "multiproc"
    proc.mkdir()
    shared.mkdir()
    (proc / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    parent = os.getppid()  # this process plays one worker; its siblings are the others
    fake_process(proc, 1001, parent, ticks=2 * TICKS, rss_pages=100)
    fake_process(proc, 1002, parent, ticks=TICKS, rss_pages=200)
    fake_process(proc, 1004, 1, ticks=TICKS, rss_pages=1)  # a reused pid: not a worker
    for pid in (1001, 1002, 1003, 1004):  # 1003 died without leaving (no /proc entry)
        (shared / f"gauge_livesum_{pid}.db").touch()
    (shared / "histogram_1003.db").touch()
    (shared / "gauge_max_1005.db").touch()  # not a live gauge: the supervisor's build info

    collector = WorkerProcessCollector(str(shared), proc=str(proc))
    registry = CollectorRegistry()
    registry.register(collector)
    families = {f.name: f for f in text_string_to_metric_families(
        generate_latest(registry).decode())}  # fmt: skip

    def by_pid(name: str) -> dict[str, float]:
        return {s.labels["pid"]: s.value for s in families[name].samples}

    assert by_pid("process_cpu_seconds") == {"1001": 4.0, "1002": 2.0}
    assert families["process_cpu_seconds"].type == "counter"
    page = os.sysconf("SC_PAGE_SIZE")
    assert by_pid("process_resident_memory_bytes") == {"1001": 100 * page, "1002": 200 * page}
    assert by_pid("process_open_fds") == {"1001": 3, "1002": 3}
    assert by_pid("process_max_fds") == {"1001": 1024, "1002": 1024}
    # the dead and the reused pid lose their live gauges (their session counts), and keep
    # their counters and histograms (requests they served still count)
    assert sorted(p.name for p in shared.iterdir()) == [
        "gauge_livesum_1001.db", "gauge_livesum_1002.db", "gauge_max_1005.db",
        "histogram_1003.db",
    ]  # fmt: skip
