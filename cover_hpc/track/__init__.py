"""One logging interface for training, validation, selection and a search (spec section ``track``).

A :class:`~cover_hpc.track.tracker.Tracker` fans every record out to its backends: the run's JSONL file
and TensorBoard (always, where the stage has them), and the experiment trackers the spec turns on,
wandb (off, offline, online) and MLflow (any tracking URI). Each run id is one tracker run, which a
requeued or resumed job continues, logging no (key, step) twice. A tracker that is down costs
nothing but a one-line warning: that backend is turned off for the job and the files still hold
everything.
"""

from cover_hpc.track.tracker import Tracker, open_tracker

__all__ = ["Tracker", "open_tracker"]
