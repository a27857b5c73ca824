"""An estimator that trains and scores like logistic regression until a test breaks it."""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression


class BreakableClassifier(LogisticRegression):
    """Looked up by reference when unpickled, so flipping `broken` reaches a model already being served."""

    broken = False

    def predict(self, X):
        if type(self).broken:
            raise RuntimeError("this model is broken on purpose")
        return super().predict(X)
