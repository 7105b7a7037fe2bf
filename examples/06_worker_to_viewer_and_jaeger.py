r"""6. A worker process streaming live to a separately started ``otelflow serve``, and to Jaeger through the collector.

Terminal 1, the viewer:        otelflow serve                         (http://127.0.0.1:8080)
Terminal 2, collector + Jaeger: see collector-config/ (OTLP on 127.0.0.1:4318, Jaeger UI on :16686)
Terminal 3, the worker:

    OTEL_SERVICE_NAME=document-worker \
    OTELFLOW_VIEWER_URL=http://127.0.0.1:8080 \
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 \
        python examples/06_worker_to_viewer_and_jaeger.py --jobs 5

(If the collector stack runs its own viewer on port 8080, skip terminal 1 and add its ``OTELFLOW_TOKEN``.)

Each job is one run with ``otelflow.run.id`` ``job-<n>``. The viewer shows spans as they start, with progress;
Jaeger gets the same spans once they end (never the live-only pending snapshots). Without a viewer or a
collector the worker runs the same: live streaming backs off quietly and nothing is exported. Stop the worker
with ``kill -9`` in the middle of a job and the viewer marks its running spans ``abandoned`` once the
heartbeats stop.
"""

from __future__ import annotations

import argparse
import os
import time

import otelflow

PACE = 0.3


@otelflow.tool("fetch_document")
def fetch_document(doc_id: str) -> str:
    time.sleep(PACE)
    return f"text of {doc_id} " * 20


@otelflow.agent("summarizer")
def summarize(text: str) -> str:
    time.sleep(PACE)
    return text.split(" of ")[1].split()[0] + ": " + str(len(text.split())) + " words"


@otelflow.node("store_summary")
def store_summary(job_id: str, summary: str) -> None:
    time.sleep(PACE / 3)


def process(job_id: str, documents: list[str]) -> list[str]:
    """One job: fetch, summarize and store each document."""
    summaries = []
    with otelflow.workflow("document_job", run_id=job_id) as run:
        run.set_input({"documents": documents})
        for done, doc_id in enumerate(documents, 1):
            summary = summarize(fetch_document(doc_id))
            store_summary(job_id, summary)
            summaries.append(summary)
            run.progress(completed=done, total=len(documents), message=f"summarized {doc_id}")
        run.set_output(summaries)
    return summaries


def main(jobs: int = 3, pace: float = 0.3) -> list[str]:
    """Process ``jobs`` jobs of three documents each; returns their run ids."""
    global PACE
    PACE = pace
    done = []
    for n in range(1, jobs + 1):
        job_id = f"job-{n}"
        process(job_id, [f"doc-{n}-{i}" for i in range(3)])
        done.append(job_id)
    return done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3)
    options = parser.parse_args()
    telemetry = otelflow.configure(live=os.environ.get("OTELFLOW_VIEWER_URL", "http://127.0.0.1:8080"))
    print(
        "live viewer:",
        os.environ.get("OTELFLOW_VIEWER_URL", "http://127.0.0.1:8080"),
        "· OTLP:",
        telemetry.exporters or "off",
    )
    for job_id in main(options.jobs):
        print("done", job_id)
    telemetry.force_flush()
