from __future__ import annotations

import warnings

import pytest
import torch

from distill.losses import (
    CPRD,
    DCD,
    FLOPS,
    CosineEmbedding,
    DirectionScores,
    LogitKL,
    LossInputs,
    MarginMSE,
    check_finite,
    check_shapes,
    cprd_loss,
    infonce_loss,
    logit_kl_loss,
    set_checks_enabled,
    warn_if_collapsed,
    warn_if_scale_mismatch,
)


def _inputs(scores: DirectionScores) -> LossInputs:
    n = scores.student.shape[0]
    return LossInputs(torch.zeros(n, n), torch.eye(n, dtype=torch.bool), torch.tensor(20.0), scores, scores)


def test_check_finite_names_tensor_and_counts() -> None:
    x = torch.tensor([1.0, float("nan"), float("inf"), float("-inf")])
    with pytest.raises(ValueError, match=r"scores contains non-finite values: 1 NaN and 2 inf"):
        check_finite("scores", x)
    check_finite("ok", torch.ones(3))


def test_nan_inputs_raise_with_name() -> None:
    logits = torch.tensor([[0.0, float("nan")]])
    with pytest.raises(ValueError, match="logits contains non-finite"):
        infonce_loss(logits, torch.tensor([[True, False]]))
    s = torch.tensor([[0.1, float("nan")]])
    with pytest.raises(ValueError, match="student_neg contains non-finite"):
        cprd_loss(s, torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), 0.1)
    with pytest.raises(ValueError, match="teacher contains non-finite"):
        logit_kl_loss(torch.zeros(1, 2), torch.tensor([[float("inf"), 0.0]]), torch.ones(1, 2, dtype=torch.bool))
    scores = DirectionScores(torch.tensor([[0.5, float("nan")]]), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"inputs\.a2b\.student contains non-finite values: 1 NaN"):
        LogitKL()(_inputs(scores))


def test_checks_can_be_disabled() -> None:
    set_checks_enabled(False)
    try:
        check_finite("x", torch.tensor([float("nan")]))
    finally:
        set_checks_enabled(True)
    with pytest.raises(ValueError):
        check_finite("x", torch.tensor([float("nan")]))


def test_check_shapes_messages() -> None:
    bound = check_shapes({"a": (torch.zeros(2, 3), ("N", "K")), "b": (torch.zeros(2, 3), ("N", "K"))})
    assert bound == {"N": 2, "K": 3}
    with pytest.raises(ValueError, match=r"b must have shape \[N, K\] \(N=2, K=3\), got \[2, 4\]"):
        check_shapes({"a": (torch.zeros(2, 3), ("N", "K")), "b": (torch.zeros(2, 4), ("N", "K"))})
    with pytest.raises(ValueError, match=r"valid must have shape \[N, K\] \(N=1, K=2\), got \[1, 3\]"):
        cprd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 3, dtype=torch.bool), 0.1)


def test_direction_scores_validation() -> None:
    bad = DirectionScores(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([[True, True, True], [False, True, True]]))
    with pytest.raises(ValueError, match=r"inputs\.a2b\.valid\[:, 0\] \(the positives\) must be all True"):
        LogitKL()(_inputs(bad))
    not_bool = DirectionScores(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="must be a bool tensor"):
        LogitKL()(_inputs(not_bool))


@pytest.mark.parametrize(
    ("cls", "kwargs", "arg", "allowed"),
    [
        (CPRD, {"temperature": 0.0}, "temperature", "> 0"),
        (CPRD, {"temperature": -1.0}, "temperature", "> 0"),
        (CPRD, {"rule": "best"}, "rule", "one of"),
        (CPRD, {"top_m": 1}, "top_m", ">= 2"),
        (CPRD, {"threshold": -0.5}, "threshold", ">= 0"),
        (CPRD, {"directions": "up"}, "directions", "one of"),
        (DCD, {"student_temperature": 0}, "student_temperature", "> 0"),
        (DCD, {"teacher_temperature": float("nan")}, "teacher_temperature", "> 0"),
        (DCD, {"num_hard_negatives": 0}, "num_hard_negatives", ">= 1"),
        (DCD, {"hard_weight": -1.0}, "hard_weight", ">= 0"),
        (DCD, {"soft": "l1"}, "soft", "one of"),
        (LogitKL, {"student_temperature": 0.0}, "student_temperature", "> 0"),
        (LogitKL, {"teacher_temperature": -2.0}, "teacher_temperature", "> 0"),
        (LogitKL, {"directions": "both_ways"}, "directions", "one of"),
        (MarginMSE, {"student_scale": 0.0}, "student_scale", "> 0"),
        (CosineEmbedding, {"student_dim": 0, "teacher_dim": 4}, "student_dim", ">= 1"),
        (CosineEmbedding, {"student_dim": 4, "teacher_dim": 4, "sides": "c"}, "sides", "one of"),
        (FLOPS, {"warmup_steps": -1}, "warmup_steps", ">= 0"),
    ],
)
def test_bad_constructor_args_raise(cls: type, kwargs: dict, arg: str, allowed: str) -> None:
    with pytest.raises(ValueError, match=rf"^{arg} must .*{allowed}"):
        cls(**kwargs)


def test_collapse_warning_function() -> None:
    teacher = torch.tensor([[10.0, 0.0, 1.0], [0.0, 8.0, 2.0]])
    with pytest.warns(UserWarning, match=r"softmax\(teacher / 0\.1\).*raise the teacher temperature \(currently 0\.1\)"):
        assert warn_if_collapsed(teacher, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_collapsed(teacher, 10.0)


def test_scale_mismatch_warning_function() -> None:
    student = torch.tensor([[-20.0, 20.0]])
    teacher = torch.tensor([[0.0, 0.01]])
    with pytest.warns(UserWarning, match=r"student logits span \[-20, 20\].*teacher scores span \[0, 0\.01\]"):
        assert warn_if_scale_mismatch(student, teacher)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_scale_mismatch(student, teacher * 1000)


def test_modules_warn_once() -> None:
    student = torch.tensor([[0.5, 0.1, -0.2], [0.3, 0.2, 0.1]])
    teacher = torch.tensor([[9.0, -3.0, -5.0], [7.0, -4.0, 0.0]])
    scores = DirectionScores(student, teacher, torch.ones(2, 3, dtype=torch.bool))
    module = LogitKL(teacher_temperature=0.05)
    with pytest.warns(UserWarning, match="teacher distribution collapsed"):
        module(_inputs(scores))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module(_inputs(scores))
    assert not [w for w in caught if "collapsed" in str(w.message)]
    with pytest.warns(UserWarning, match="teacher distribution collapsed"):
        DCD(teacher_temperature=0.05)(_inputs(scores))
    big_teacher = teacher * 1e4
    with pytest.warns(UserWarning, match="scale mismatch"):
        MarginMSE(student_scale=1.0)(_inputs(DirectionScores(student, big_teacher, scores.valid)))


def test_missing_direction_raises() -> None:
    scores = DirectionScores(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool))
    inputs = LossInputs(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), torch.tensor(1.0), scores, None)
    with pytest.raises(ValueError, match=r"CPRD needs teacher candidate scores for direction 'b2a' but inputs\.b2a is None"):
        CPRD()(inputs)
    assert CPRD(directions="a2b")(inputs).item() == 0.0
