"""librarm.judging.compare: a judge's accuracy on the generators it was trained on (seen) against the
held-out ones."""
from librarm.judging.compare import seen_heldout_accuracy


def test_seen_heldout():
    preds = [{"model": "g1", "pred": 1, "label": 1}, {"model": "g2", "pred": 0, "label": 1}]
    assert seen_heldout_accuracy(preds, ["g2"]) == {"seen": 1.0, "held_out": 0.0}
