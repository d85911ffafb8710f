"""Top-k accuracy: the fraction of references found among the k best-ranked predictions."""
import datasets
import evaluate

_DESCRIPTION = "Top-k accuracy = fraction of rows whose reference is among their k highest-scored labels."
_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of int): per row, labels ranked best first (at least k of them).
    references (list of int): true labels.
    k (int): how many of the ranked labels count.
Returns:
    top_k_accuracy (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64")),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, k=5):
        if not predictions:
            raise ValueError("top-k accuracy of zero predictions is undefined")
        hits = sum(int(r in p[:k]) for p, r in zip(predictions, references))
        return {"top_k_accuracy": hits / len(predictions)}
