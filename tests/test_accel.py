"""advx._accel.accelerate: autocast, channels-last inputs and torch.compile for the
model an evaluation attacks, none of them changing the caller's model."""
from collections import namedtuple

import pytest
import torch
from torch import nn

import advx._accel as accel
from advx._accel import accelerate
from advx._runtime import eval_mode


def _conv_model(channels=1):
    return nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10)).eval()


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def _inputs(n=12, channels=1):
    return torch.rand(n, channels, 8, 8)


def _snapshot(model):
    return {k: (v.detach().clone(), v.dtype, v.is_contiguous(), v.stride()) for k, v in model.state_dict().items()}


def _assert_unchanged(model, snap):
    now = model.state_dict()
    assert now.keys() == snap.keys()
    for k, (value, dtype, contiguous, stride) in snap.items():
        assert now[k].dtype == dtype and now[k].is_contiguous() == contiguous and now[k].stride() == stride, k
        assert torch.equal(now[k], value), k


def _forward_and_grad(fn, x):
    x = x.clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad(out.float().logsumexp(dim=1).sum(), x)
    return out, grad


def test_all_off_returns_the_model_itself():
    model = _conv_model()
    got, notes = accelerate(model, _inputs(4))
    assert got is model and notes == []


@pytest.mark.parametrize("amp", ["fp32", "bfloat16", "BF16", 16, ""])
def test_bad_amp_is_a_value_error_naming_amp(amp):
    with pytest.raises(ValueError, match="amp"):
        accelerate(_conv_model(), _inputs(4), amp=amp)


def test_bf16_float32_logits_and_input_gradient_model_untouched():
    model, x = _conv_model(), _inputs()
    snap = _snapshot(model)
    fast, notes = accelerate(model, x[:4], amp="bf16")
    assert notes == []
    assert isinstance(fast, nn.Module) and fast is not model
    assert any(m is model for m in fast.modules())
    assert next(fast.parameters()) is next(model.parameters())
    out, grad = _forward_and_grad(fast, x)
    ref, ref_grad = _forward_and_grad(model, x)
    assert out.dtype == torch.float32 and grad.dtype == torch.float32
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    torch.testing.assert_close(out, ref, atol=5e-2, rtol=5e-2)
    assert torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.99
    _assert_unchanged(model, snap)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.is_autocast_enabled("cpu")  # the autocast region ended with the forward


def test_fp16_works_or_is_a_clear_value_error():
    model, x = _conv_model(), _inputs()
    try:
        fast, notes = accelerate(model, x[:4], amp="fp16")
    except ValueError as e:  # a torch without float16 CPU autocast
        assert "fp16" in str(e)
        return
    assert any("fp16" in n for n in notes)
    out, grad = _forward_and_grad(fast, x)
    assert out.dtype == torch.float32 and torch.isfinite(grad).all()
    torch.testing.assert_close(out, model(x), atol=1e-2, rtol=1e-2)


def test_amp_casts_the_logits_of_tuple_namedtuple_and_mapping_outputs():
    Out = namedtuple("Out", "logits features")

    class Multi(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.body, self.kind = _conv_model(), kind

        def forward(self, x):
            logits = self.body(x)
            if self.kind == "tuple":
                return logits, x.mean()
            if self.kind == "list":
                return [logits, 7]
            if self.kind == "namedtuple":
                return Out(logits, x.sum())
            return {"logits": logits, "extra": "kept"}

    x = _inputs(5)
    for kind in ("tuple", "list", "namedtuple", "dict"):
        fast, _ = accelerate(Multi(kind), x[:2], amp="bf16")
        out = fast(x)
        logits = out["logits"] if kind == "dict" else out[0]
        assert logits.dtype == torch.float32 and logits.shape == (5, 10), kind
        assert type(out) is type(Multi(kind)(x)), kind
        if kind == "dict":
            assert out["extra"] == "kept"
        if kind == "list":
            assert out[1] == 7


def test_channels_last_same_outputs_model_untouched():
    model, x = _conv_model(3), _inputs(channels=3)  # one channel would be channels-last already
    snap = _snapshot(model)
    seen = []
    model[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    fast, notes = accelerate(model, x[:4], channels_last=True)
    assert notes == [] and fast is not model
    out, grad = _forward_and_grad(fast, x)
    seen_fast = list(seen)
    ref, ref_grad = _forward_and_grad(model, x)
    assert seen_fast == [True] and seen[-1] is False  # only the wrapper's inputs were converted
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)
    assert grad.is_contiguous() or grad.is_contiguous(memory_format=torch.channels_last)
    _assert_unchanged(model, snap)
    assert all(p.is_contiguous() for p in model.parameters())


def test_channels_last_skipped_for_an_mlp_with_a_note():
    model = _mlp()
    fast, notes = accelerate(model, _inputs(4), channels_last=True)
    assert fast is model
    assert len(notes) == 1 and "channels_last" in notes[0] and "Conv" in notes[0]
    # with amp the MLP is still wrapped, without any conversion of its inputs
    fast, notes = accelerate(model, _inputs(4), channels_last=True, amp="bf16")
    assert fast is not model and fast.memory_format is None and len(notes) == 1


def test_compile_works_or_falls_back_with_correct_outputs():
    torch._dynamo.reset()
    model, x = _conv_model(), _inputs(12)
    snap = _snapshot(model)
    fast, notes = accelerate(model, x[:4], compile=True)
    if notes:  # no C++ compiler, an unsupported op: eager, said why
        assert len(notes) == 1 and notes[0].startswith("compile fell back to eager: ")
        assert fast is model
    else:
        assert fast._compiled is not None and any(m is model for m in fast.modules())
    ref, ref_grad = _forward_and_grad(model, x)
    for n in (12, 7):  # another batch size than the trial's: dynamic shapes
        out, grad = _forward_and_grad(fast, x[:n])
        torch.testing.assert_close(out, ref[:n], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grad, ref_grad[:n], atol=1e-5, rtol=1e-4)
    _assert_unchanged(model, snap)


def test_compile_failure_falls_back_with_a_note(monkeypatch):
    model, x = _conv_model(), _inputs(6)

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line of the message")

    monkeypatch.setattr(torch, "compile", broken_compile)
    fast, notes = accelerate(model, x[:2], compile=True)
    assert fast is model
    assert notes == ["compile fell back to eager: RuntimeError: no C++ compiler found"]
    # the other options still apply
    fast, notes = accelerate(model, x[:2], compile=True, amp="bf16")
    assert fast is not model and fast._compiled is None and len(notes) == 1
    assert fast(x).dtype == torch.float32


def test_compile_trial_failure_falls_back(monkeypatch):
    """torch.compile itself returns, but the trial forward/backward raises."""
    model, x = _conv_model(), _inputs(6)

    def lazy_broken(fn, **kwargs):
        def run(*args, **kw):
            raise NotImplementedError("unsupported op aten::foo")
        return run

    monkeypatch.setattr(torch, "compile", lazy_broken)
    fast, notes = accelerate(model, x[:2], compile=True, channels_last=True)
    assert len(notes) == 1 and "NotImplementedError: unsupported op aten::foo" in notes[0]
    assert fast._compiled is None
    torch.testing.assert_close(fast(x), model(x), atol=1e-5, rtol=1e-5)


def test_compile_with_wrong_outputs_falls_back(monkeypatch):
    model, x = _conv_model(), _inputs(6)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (lambda *a, **k: fn(*a, **k) + 1.0))
    fast, notes = accelerate(model, x[:2], compile=True)
    assert fast is model and len(notes) == 1 and "differ from eager" in notes[0]


def test_a_compiled_forward_failing_later_runs_eager_with_a_warning():
    model, x = _conv_model(), _inputs(6)
    fast, _ = accelerate(model, x[:2], amp="bf16")

    def fails(*args, **kwargs):
        raise RuntimeError("recompilation failed")

    object.__setattr__(fast, "_compiled", fails)  # as a compile that passed its trial
    with pytest.warns(RuntimeWarning, match="recompilation failed"):
        out = fast(x)
    assert out.dtype == torch.float32 and fast._compiled is None
    # the model's own errors still propagate
    object.__setattr__(fast, "_compiled", fails)
    with pytest.raises(RuntimeError, match="channels|shape|size|expected"):
        fast(torch.rand(2, 3, 8, 8))


def test_eval_mode_reaches_the_wrapped_model():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(256, 10))
    model.train()
    fast, _ = accelerate(model, _inputs(2), amp="bf16", channels_last=True)
    assert next(fast.parameters()).device == next(model.parameters()).device
    x = _inputs(4)
    with eval_mode(fast):
        assert not model.training and not model[2].training
        a, b = fast(x), fast(x)
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # no dropout
    assert model.training and model[2].training and fast.training


def test_each_compiled_wrapper_has_its_own_code_object(monkeypatch):
    """Dynamo's recompile_limit counts per code object: models accelerated one after
    another in a process must not share one budget (the ninth would run eager)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(kw) or fn)
    x = _inputs(4)
    a, notes_a = accelerate(_conv_model(), x[:2], compile=True)
    b, notes_b = accelerate(_conv_model(), x[:2], compile=True)
    assert notes_a == notes_b == [] and compiled == [{"dynamic": True}] * 2
    assert a._compiled.__code__ is not b._compiled.__code__
    assert a._compiled.__self__ is a and b._compiled.__self__ is b
    torch.testing.assert_close(a(x), a.model(x), atol=0, rtol=0)


def test_evaluate_under_bf16_autocast_keeps_float32_examples_inside_the_budget():
    """evaluate(amp="bf16"): the model runs in bfloat16, the attacks' iterates stay float32
    and inside the budget, and the result is close to float32's."""
    from advx.attacks import APGD, PGD
    from advx.eval import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)).eval()
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    y = model(x).argmax(1)  # all clean: something to attack
    seen = []

    class Spy(PGD):
        def _attack(self, images, labels, record_loss, report=True):
            res = super()._attack(images, labels, record_loss, report)
            seen.append(res.adv)
            return res

    attacks = [Spy(model, 0.05, steps=5, seed=0), APGD(model, 0.05, steps=5, seed=0)]
    ev = evaluate(model, (x, y), 0.05, attacks=attacks, amp="bf16", progress=False, batch_size=16)
    ref = evaluate(model, (x, y), 0.05, attacks=attacks, progress=False, batch_size=16)
    assert seen and all(a.dtype == torch.float32 for a in seen)
    adv = seen[0]
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert abs(ev.robust_accuracy - ref.robust_accuracy) <= 0.1
    assert attacks[0].model is model  # the caller's attack objects are not changed


def test_evaluate_counts_the_float32_models_verdicts_not_bfloat16s():
    """Under amp only the search runs in bfloat16: clean accuracy and each success are
    the model's own (float32) verdicts. Here bfloat16 rounding decides the class of most
    samples (two logits 1e-3 apart around a large common part), float32 gets every one
    right, and an attack of negligible size changes no float32 verdict."""
    from advx.attacks import FGSM
    from advx.eval import evaluate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    with torch.no_grad():
        model[1].weight[1] = model[1].weight[0]
        model[1].weight[1, 0] += 1e-3  # logit 1 - logit 0 = 1e-3 * (x[0] - 0.5)
        model[1].bias[1] = model[1].bias[0] - 5e-4
    x = torch.rand(200, 1, 8, 8)
    x[:, 0, 0, 0] = torch.where(torch.rand(200) < 0.5, 0.25, 0.75)
    with torch.no_grad():
        y = model(x).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_bf16 = model(x).argmax(1)
    assert int((y_bf16 != y).sum()) >= 20  # the premise: bfloat16 gets many wrong
    ev = evaluate(model, (x, y), 1e-6, attacks=[FGSM(model, 1e-6)], amp="bf16", progress=False, batch_size=64)
    assert ev.clean_accuracy == 1.0
    assert ev.robust_accuracy == 1.0
