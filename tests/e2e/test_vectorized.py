"""Vectorized services against a real server: one call per chunk, failing records isolated."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from batchserve import BatchState, errors

pytestmark = pytest.mark.e2e


def predict(frame):  # type: ignore[no-untyped-def]
    return model.predict_proba(frame[["hp", "wt"]].to_numpy())[:, 1]  # noqa: F821 - a model


def reciprocal(frame):  # type: ignore[no-untyped-def]
    if (frame["x"] == 0).any():
        raise ZeroDivisionError("x is zero")
    return pd.DataFrame({"inv": 1.0 / frame["x"]})


def test_a_vectorized_model_scores_a_batch_like_the_model_itself(client, unique_name):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"hp": rng.uniform(50, 300, 5000), "wt": rng.uniform(1.5, 5.5, 5000)})
    labels = (frame["hp"] / 100 - frame["wt"] + rng.normal(0, 0.5, 5000) > 0).astype(int)
    fitted = LogisticRegression(C=math.inf, max_iter=1000).fit(frame.to_numpy(), labels)
    svc = client.publish_service(
        unique_name,
        code=predict,
        models={"model": fitted},
        inputs={"hp": float, "wt": float},
        outputs={"p": float},
        version="v1",
        vectorized=True,
    )
    assert svc.consume(hp=120, wt=2.8).output("p") == pytest.approx(
        fitted.predict_proba([[120, 2.8]])[0, 1]
    )
    resp = svc.batch(frame, parallel_count=2).start().wait(timeout=120)
    assert resp.state is BatchState.COMPLETED
    result = resp.to_pandas()
    assert result["p"].to_numpy() == pytest.approx(fitted.predict_proba(frame.to_numpy())[:, 1])


def test_a_failing_vectorized_call_fails_only_the_bad_records(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        code=reciprocal,
        inputs={"x": float},
        outputs={"inv": float},
        version="v1",
        vectorized=True,
    )
    xs = [float(i % 50) for i in range(200)]
    frame = svc.batch({"x": xs}, parallel_count=2).start().wait(timeout=120).to_pandas()
    failed = frame[frame["status"] == "failed"]
    assert list(failed["index"]) == [i for i, x in enumerate(xs) if x == 0]
    assert set(failed["error"]) == {"x is zero"}
    ok = frame[frame["status"] == "succeeded"]
    assert ok["inv"].to_numpy() == pytest.approx([1 / x for x in xs if x != 0])


def test_a_code_string_cannot_be_vectorized(client, unique_name):  # type: ignore[no-untyped-def]
    with pytest.raises(errors.UsageError):
        client.publish_service(
            unique_name, code="y = x", inputs={"x": float}, outputs={"y": float}, vectorized=True
        )


def summarize(frame):  # type: ignore[no-untyped-def]
    return pd.DataFrame(
        {
            "half": frame["x"] / 2,
            "rounded": frame["x"].round(),
            "label": [f"{x:g}" if x != 3 else 3 for x in frame["x"]],
            "big": frame["x"] > 2,
        }
    )


def test_a_vectorized_batch_fails_only_records_with_a_bad_input_or_output(client, unique_name):  # type: ignore[no-untyped-def]
    svc = client.publish_service(
        unique_name,
        code=summarize,
        inputs={"x": float},
        outputs={"half": float, "rounded": int, "label": str, "big": bool},
        version="v1",
        vectorized=True,
    )
    # Text, as an upload whose column does not convert as a whole: checked value by value.
    xs = ["1", "2.5", "abc", "3", "", "4"]
    resp = svc.batch({"x": xs}, parallel_count=1).start().wait(timeout=120)
    assert resp.state is BatchState.COMPLETED
    frame = resp.to_pandas()
    assert list(frame["status"]) == [
        "succeeded", "succeeded", "failed", "failed", "failed", "succeeded"
    ]  # fmt: skip
    assert frame.loc[2, "error"] == "input 'x' must be float, got str 'abc'."
    assert frame.loc[3, "error"] == "output 'label' must be str, got int 3."
    assert frame.loc[4, "error_type"] == "SchemaError"
    ok = frame[frame["status"] == "succeeded"]
    assert list(ok["half"]) == [0.5, 1.25, 2.0]
    assert list(ok["rounded"]) == [1, 2, 4]
    assert list(ok["label"]) == ["1", "2.5", "4"]
    assert list(ok["big"]) == [False, True, True]
