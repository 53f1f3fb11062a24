"""What the system-metrics sampler costs: CPU time of this process with the default ``telemetry`` sampling a run,
against the same wait with sampling off, in alternating rounds; and the points a two-second job gets.

    python benchmarks/system_metrics_cost.py [--rounds 2] [--seconds 20]

Prints the share of one core each way and the difference (the sampler's cost), in percent of a core.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil


def cpu_seconds() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    from mlflow import MlflowClient

    from ascend_lab.config.telemetry import TelemetryConfig
    from ascend_lab.telemetry import job_telemetry

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        client = MlflowClient(uri)
        experiment = client.create_experiment("system_metrics_cost")
        shares: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for sampling in (False, True):
                run_id = client.create_run(experiment).info.run_id
                with job_telemetry(TelemetryConfig(enabled=sampling, rapl_root=tmp), run_id, uri):
                    time.sleep(0.5)
                    cpu0, wall0 = cpu_seconds(), time.monotonic()
                    time.sleep(args.seconds)
                    shares[sampling].append(100 * (cpu_seconds() - cpu0) / (time.monotonic() - wall0))
        run_id = client.create_run(experiment).info.run_id
        with job_telemetry(TelemetryConfig(rapl_root=tmp), run_id, uri):
            time.sleep(2.0)
        points = len(client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
    off, on = (sum(shares[k]) / len(shares[k]) for k in (False, True))
    print(f"interval {TelemetryConfig.interval_s} s: {on:.2f} % of a core sampling, {off:.2f} % without; "
          f"sampler cost {on - off:.2f} % of a core; a 2-second job: {points} points per curve")


if __name__ == "__main__":
    main()
