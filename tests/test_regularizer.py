
import numpy as np
import pytest
import torch
from torch import nn

from lot_rl.errors import LoTUserError
from lot_rl.regularizer import (STUDENT_LOSSES, TARGET_CHUNK, ObservationCache, Students, kl, reference_kl_weight,
                                student_loss, teachability_kl, validate_student_weights)


def np_kl(p_logits, q_logits, T):
    """T^2 * KL(softmax(q/T) || softmax(p/T)), batch mean, by hand."""
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    p, q = softmax(p_logits / T), softmax(q_logits / T)
    return T**2 * np.mean(np.sum(q * (np.log(q) - np.log(p)), -1))


@pytest.mark.parametrize("T", [1.0, 1.5, 4.0])
def test_kl_matches_hand_computation_and_kldivloss(T):
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g)
    expected = np_kl(p.double().numpy(), q.double().numpy(), T)
    assert kl(p, q, T).item() == pytest.approx(expected, rel=1e-5)
    torch_def = nn.KLDivLoss(reduction="batchmean", log_target=True)(
        torch.log_softmax(p / T, -1), torch.log_softmax(q / T, -1)) * T**2
    assert kl(p, q, T).item() == pytest.approx(torch_def.item(), rel=1e-6)
    assert kl(p, p, T).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_flattens_sequence_logits():
    p, q = torch.randn(3, 5, 7), torch.randn(3, 5, 7)
    assert kl(p, q).item() == pytest.approx(kl(p.reshape(15, 7), q.reshape(15, 7)).item(), rel=1e-6)


def test_teachability_gradient_reaches_teacher_only():
    """teacher loss = task + alpha * kl(teacher, student.detach()): the teacher receives alpha * the KL
    gradient; the student receives nothing from the teacher's loss."""
    torch.manual_seed(0)
    teacher_logits = torch.randn(8, 4, requires_grad=True)
    student_logits = torch.randn(8, 4, requires_grad=True)
    alpha, T = 0.5, 1.5
    (alpha * teachability_kl(teacher_logits, [student_logits], T)).backward()
    assert student_logits.grad is None
    # Closed form: d/dp T^2 KL(softmax(q/T) || softmax(p/T)) = T * (softmax(p/T) - softmax(q/T)) / batch
    expected = alpha * T * (torch.softmax(teacher_logits / T, -1) - torch.softmax(student_logits / T, -1)) / 8
    torch.testing.assert_close(teacher_logits.grad, expected.detach(), rtol=1e-5, atol=1e-7)


def test_teachability_with_weights_sums_students():
    t = torch.randn(5, 3)
    s1, s2 = torch.randn(5, 3), torch.randn(5, 3)
    got = teachability_kl(t, [s1, s2], 1.0, weights=[0.25, 2.0])
    assert got.item() == pytest.approx(0.25 * kl(t, s1).item() + 2.0 * kl(t, s2).item(), rel=1e-6)
    equal = teachability_kl(t, [s1, s2], 1.0)  # default: equal weights summing to 1
    assert equal.item() == pytest.approx(0.5 * kl(t, s1).item() + 0.5 * kl(t, s2).item(), rel=1e-6)
    with pytest.raises(LoTUserError, match="--student-weights has 1 values for 2 students; give one per student"):
        teachability_kl(t, [s1, s2], 1.0, weights=[1.0])
    with pytest.raises(LoTUserError, match=r"--student-weights must be >= 0, got \[0.5, -1.0\]"):
        validate_student_weights([0.5, -1.0], 2)
    validate_student_weights([], 3)  # none given: equal weights


def test_symmetric_teachability_adds_the_other_direction_for_the_teacher_only():
    """The reference's symmetric variants: alpha (kl(t, s) + kl(s, t)), both terms the teacher's gradient."""
    t = torch.randn(6, 4, requires_grad=True)
    s = torch.randn(6, 4, requires_grad=True)
    got = teachability_kl(t, [s, s * 2], 1.5, weights=[0.5, 0.5], symmetric=True)
    want = sum(0.5 * (kl(t, q, 1.5) + kl(q, t, 1.5)) for q in (s.detach(), 2 * s.detach()))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    got.backward()
    assert s.grad is None
    torch.testing.assert_close(t.grad, torch.autograd.grad(want, t)[0])


def test_reference_kl_weight_is_alpha_beside_cross_entropy_and_one_alone():
    assert [reference_kl_weight(v, 0.3) for v in STUDENT_LOSSES] == \
        [1.0 if not v.endswith("_ce") else 0.3 for v in STUDENT_LOSSES]


def test_undetached_penalty_gives_students_gradient():
    t = torch.randn(4, 3, requires_grad=True)
    s = torch.randn(4, 3, requires_grad=True)
    teachability_kl(t, [s], detach=False).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_student_loss_variants_against_hand_computation():
    torch.manual_seed(1)
    s, t = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    T = 1.5
    ce = nn.functional.cross_entropy(s, y).item()
    fwd = np_kl(s.detach().double().numpy(), t.double().numpy(), T)
    rev = np_kl(t.double().numpy(), s.detach().double().numpy(), T)
    assert student_loss(s, t, T, "kl").item() == pytest.approx(fwd, rel=1e-5)
    assert student_loss(s, t, T, "kl_ce", y, kl_weight=0.5).item() == pytest.approx(ce + 0.5 * fwd, rel=1e-5)
    assert student_loss(s, t, T, "symmetric_kl").item() == pytest.approx(fwd + rev, rel=1e-5)
    assert student_loss(s, t, T, "symmetric_kl_ce", y).item() == pytest.approx(ce + fwd + rev, rel=1e-5)
    with pytest.raises(LoTUserError, match="unknown student loss"):
        student_loss(s, t, T, "mse")


def test_student_loss_gives_teacher_no_gradient():
    s, t = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    student_loss(s, t, 1.0, "symmetric_kl").backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_students_imitate_reduces_kl_and_keeps_separate_optimizers():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    teacher = nn.Linear(10, 4)
    with torch.no_grad():
        target = teacher(x) * 3
    students = Students([nn.Linear(10, 4), nn.Linear(10, 4)],
                        make_optimizer=lambda p: torch.optim.Adam(p, lr=0.05), max_grad_norm=1.0)
    assert len(students.optimizers) == 2 and students.optimizers[0] is not students.optimizers[1]
    before = [kl(l, target).item() for l in students.logits(x)]
    for _ in range(100):
        students.imitate(x, target)
    after = [kl(l, target).item() for l in students.logits(x)]
    assert all(a < 0.2 * b for a, b in zip(after, before))


def test_students_state_roundtrip():
    make = lambda: Students([nn.Linear(3, 2)], make_optimizer=lambda p: torch.optim.Adam(p, lr=0.1))
    a, b = make(), make()
    a.imitate(torch.randn(4, 3), torch.randn(4, 2))
    b.load_state_dict(a.state_dict())
    for pa, pb in zip(a.networks.parameters(), b.networks.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(LoTUserError, match="--num-students"):
        Students([nn.Linear(3, 2)] * 2, make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1)).load_state_dict(a.state_dict())


def test_cache_copies_keeps_distinct_last_rollouts():
    cache = ObservationCache(3, "copies")
    buffer = torch.zeros(4, 2, dtype=torch.uint8)
    for i in range(5):
        buffer.fill_(i)  # the rollout buffer is overwritten in place, as in training
        cache.append(buffer)
    assert len(cache) == 3
    assert [int(e[0, 0]) for e in cache.entries()] == [2, 3, 4]


def test_cache_reference_mode_aliases_latest_rollout():
    cache = ObservationCache(10, "reference")
    buffer = torch.zeros(4, 2)
    for i in range(3):
        buffer.fill_(i)
        cache.append(buffer)
    entries = cache.entries()
    assert len(entries) == 3 and all(int(e[0, 0]) == 2 for e in entries)


def test_cache_state_roundtrip_and_validation():
    cache = ObservationCache(2)
    for i in range(3):
        cache.append(torch.full((2, 2), float(i)))
    restored = ObservationCache(2)
    restored.load_state_dict(cache.state_dict())
    assert restored.seen == 3 and [e[0, 0].item() for e in restored.entries()] == [1.0, 2.0]
    restored.append(torch.full((2, 2), 9.0))
    assert [e[0, 0].item() for e in restored.entries()] == [2.0, 9.0]
    with pytest.raises(LoTUserError, match="--obs-num"):
        ObservationCache(0)
    with pytest.raises(LoTUserError, match="--cache-mode"):
        ObservationCache(2, "views")


def test_student_minibatches_shuffle_every_rollout_each_pass_with_targets_computed_once():
    cache = ObservationCache(3)
    for i in range(2):  # rollout i holds the states 10 i .. 10 i + 4
        cache.append(torch.arange(5, dtype=torch.float32)[:, None] + 10 * i)
    calls = []

    def teacher(states):
        calls.append(states.shape[0])
        return torch.cat([states, -states], 1).to(torch.bfloat16)

    torch.manual_seed(0)
    batches = list(cache.student_minibatches(teacher, passes=2, minibatches=3))
    assert calls == [5, 5]  # once per cached rollout, before the first minibatch
    assert [len(states) for states, _ in batches] == [2, 2, 1] * 4  # 2 passes x 2 rollouts; the last one smaller
    for states, targets in batches:
        assert targets.dtype == torch.float32 and torch.equal(targets, torch.cat([states, -states], 1))
    visits = [torch.cat([states for states, _ in batches[k:k + 3]]).flatten() for k in range(0, 12, 3)]
    assert [sorted(v.tolist()) for v in visits] == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]] * 2  # oldest first
    assert not torch.equal(visits[0], visits[2])  # a fresh shuffle each pass
    assert list(cache.student_minibatches(teacher, passes=0, minibatches=3)) == [] and len(calls) == 2


def test_student_minibatches_chunk_the_teacher_and_share_repeated_rollouts():
    calls = []
    teacher = lambda states: calls.append(states.shape[0]) or states.repeat(1, 2)
    big = ObservationCache(1)
    big.append(torch.randn(TARGET_CHUNK + 44, 1))
    assert sum(len(s) for s, _ in big.student_minibatches(teacher, 1, 3)) == TARGET_CHUNK + 44
    assert calls == [TARGET_CHUNK, 44]
    calls.clear()
    reference = ObservationCache(4, "reference")
    for _ in range(3):
        reference.append(torch.randn(6, 1))
    assert len(list(reference.student_minibatches(teacher, 1, 2))) == 3 * 2
    assert calls == [6]  # three entries, one rollout: its targets once


def test_cache_state_fits_another_capacity_or_mode():
    saved = ObservationCache(3)
    for i in range(5):
        saved.append(torch.full((2, 2), float(i)))
    smaller = ObservationCache(2)
    smaller.load_state_dict(saved.state_dict())  # --obs-num 2 on resume: the two most recent rollouts
    assert len(smaller) == 2 and [e[0, 0].item() for e in smaller.entries()] == [3.0, 4.0]
    smaller.append(torch.full((2, 2), 5.0))
    assert [e[0, 0].item() for e in smaller.entries()] == [4.0, 5.0]
    reference = ObservationCache(4, "reference")
    reference.load_state_dict(saved.state_dict())  # the latest rollout, min(seen, capacity) times
    assert [e[0, 0].item() for e in reference.entries()] == [4.0] * 4
    copies = ObservationCache(3)
    copies.load_state_dict(reference.state_dict())
    assert [e[0, 0].item() for e in copies.entries()] == [4.0]


@pytest.mark.parametrize("mode", ObservationCache.MODES)
def test_cache_starts_afresh_on_a_rollout_of_another_shape(mode):
    """Issue 12, bug 1: a rollout of another size (SB3's set_env with another n_envs, a resumed run with
    another --num-envs) used to reallocate the buffer but keep the count of filled entries, so entries()
    handed out uninitialised memory."""
    cache = ObservationCache(3, mode)
    for i in range(4):
        cache.append(torch.full((4, 2), float(i)))
    cache.append(torch.full((6, 2), 7.0))
    entries = cache.entries()
    assert len(cache) == len(entries) == 1  # the rollouts of the old shape are gone, never garbage
    assert entries[0].shape == (6, 2) and bool((entries[0] == 7.0).all())
    cache.append(torch.full((6, 2), 8.0))
    assert [e[0, 0].item() for e in cache.entries()] == ([7.0, 8.0] if mode == "copies" else [8.0, 8.0])


def test_student_minibatches_shuffle_with_their_own_generator():
    """A generator of their own makes the student phase's shuffles independent of torch's global generator
    (lot-rl train --overlap-students runs them beside the rollout's action sampling)."""
    cache = ObservationCache(2)
    cache.append(torch.arange(12.0).reshape(12, 1))
    teacher = lambda states: states * 2  # noqa: E731

    def rows(seed):
        generator = torch.Generator().manual_seed(seed)
        return [s.flatten().tolist() for s, _ in cache.student_minibatches(teacher, 2, 3, generator)]

    torch.manual_seed(0)
    global_state = torch.get_rng_state()
    first = rows(5)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global generator was not drawn from
    torch.manual_seed(1)
    assert rows(5) == first and rows(6) != first
    assert sorted(sum(first[:3], [])) == list(range(12))  # each pass still covers the rollout once
