"""Analysis jobs: the queue that carries accepted images to the detector."""

from covidet.worker.queue import AnalysisQueue, InProcessQueue

__all__ = ["AnalysisQueue", "InProcessQueue"]
