"""The measuring process of :func:`.timing.run_job`: ``python -m lit_snapvideo.bench JOB.json RESULT.json`` reads
a job (a JSON object, see :func:`.timing.measure_job`), measures it and writes its result as JSON."""

import json
import sys
from pathlib import Path

from .timing import measure_job

if __name__ == "__main__":
    _job, _result = sys.argv[1:3]
    Path(_result).write_text(json.dumps(measure_job(json.loads(Path(_job).read_text()))))
