"""The typed worker jobs (converters/protocol.py): what crosses the process boundary is one
dataclass per task, and a worker refuses a job.json it does not understand instead of
running it with a default it guessed."""
from __future__ import annotations

import json

import pytest

from converters.protocol import (JOBS, BenchJob, CaptureJob, ConvertJob, DescribeJob,
                                 EvaluateJob, LatencyJob, ListJob, WorkerError, job_json,
                                 parse_job)

ENTRY = {"model_id": "resnet18", "num_classes": 10}
EXAMPLES = [
    ConvertJob(entry=ENTRY, checkpoint="/c.pth", images=["/a.JPEG"], batch_size=1,
               candidates=[{"name": "x"}], calibration_images=["/b.JPEG"], threads=2,
               max_image_pixels=0),
    CaptureJob(entry=ENTRY, checkpoint="/c.pth", images=["/a.JPEG"]),
    EvaluateJob(entry=ENTRY, checkpoint="/c.pth", images=[], batch_size=32, data_workers=3),
    BenchJob(entry=ENTRY, images=["/a.JPEG"], batch_size=8, data_workers_list=[1, 2]),
    LatencyJob(entry=ENTRY, batch_sizes=[1, 4], warmup=1, runs=3),
    DescribeJob(model_ids=["a", "b"]),
    ListJob(pattern="res*"),
]


def test_every_task_has_an_example_and_each_survives_job_json():
    assert {type(job) for job in EXAMPLES} == set(JOBS.values())
    for job in EXAMPLES:
        data = json.loads(json.dumps({"protocol": 1, **job_json(job)}))
        assert data["task"] == job.task
        assert parse_job(data) == job


def test_a_job_without_a_task_is_a_convert_job():
    data = EXAMPLES[0].to_json()
    del data["task"]
    assert isinstance(parse_job(data), ConvertJob)


@pytest.mark.parametrize("data, words", [
    ({"task": "no-such-task"}, "unknown task 'no-such-task' (known: convert, capture,"),
    # the evaluate job's old field name: refused, not silently replaced by the default
    ({**EXAMPLES[2].to_json(), "max_pending_shards": 4},
     "evaluate job: unknown field(s) max_pending_shards"),
    ({k: v for k, v in EXAMPLES[0].to_json().items() if k not in ("batch_size", "images")},
     "convert job: missing field(s) batch_size, images"),
    ({"task": "latency", "entry": ENTRY, "warmup": 1, "runs": 1, "typo": 1},
     "latency job: unknown field(s) typo; missing field(s) batch_sizes"),
])
def test_a_job_the_worker_does_not_understand_is_refused_naming_what(data, words):
    with pytest.raises(WorkerError) as refused:
        parse_job(data)
    assert refused.value.kind == "job"
    assert words in refused.value.message


def test_a_plain_dict_passes_as_it_is():
    """Test workers (tests/helpers/memory_hog.py) speak their own jobs."""
    assert job_json({"task": "evaluate", "mb": 1}) == {"task": "evaluate", "mb": 1}
