"""lm-evaluation-harness's `squadv2` task reading the dataset its YAML names, scored offline.

The prompt, the requests (a greedy generation until a newline, and the log-likelihood of " unanswerable" as the
no-answer probability) and the metric keys are the squadv2 task's own (lm_eval.tasks.squadv2.task.SQuAD2,
inherited). Two things change, both because the Hub cannot be reached: the data comes from the YAML's dataset_path
and dataset_kwargs (SQuAD2 itself always loads the Hub's lighteval/squad_v2, whatever its config says), and the
metric is squad_lora's local copy of the official SQuAD v2.0 script, which SQuAD2 loads from the Hub as
evaluate's "squad_v2" (the same script, the same keys).
"""

from functools import partial

from lm_eval.api.task import ConfigurableTask
from lm_eval.tasks.squadv2.task import SQuAD2


def squad_v2_score(key: str, items) -> float:
    """One key of the official v2.0 result over the (prediction, reference) pairs of process_results."""
    from squad_lora.scoring import load_metric

    predictions, references = zip(*items)
    return load_metric(version_2=True).compute(predictions=predictions, references=references).get(key, 0)


class LocalSQuAD2(SQuAD2):
    def __init__(self, config=None):
        config = config or {}
        # SQuAD2.__init__ drops the config it is given: pass the dataset on to ConfigurableTask here
        ConfigurableTask.__init__(
            self,
            config={
                "metadata": {"version": self.VERSION},
                "dataset_path": config["dataset_path"],
                "dataset_kwargs": dict(config.get("dataset_kwargs") or {}),
            },
        )

    def has_training_docs(self):
        return False  # the local copy is the validation split only; the task runs zero-shot

    def aggregation(self):
        return {key: partial(squad_v2_score, key) for key in super().aggregation()}
