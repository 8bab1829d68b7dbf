"""Batched students (lot_rl.students): the same math as K networks run one after another."""

import copy

import pytest
import torch
from torch import nn

import lot_rl.agents.ppo_lot_atari as lot
from lot_rl.regularizer import Students, kl
from lot_rl.errors import LoTUserError
from lot_rl.students import StudentStack, batch_students_here, stacking_obstacle

pytestmark = pytest.mark.usefixtures("one_thread")

MINATAR = (4, 10, 10)  # small grids: the real student network, fast enough for tests


def _students(networks, weights, batched, max_grad_norm=0.5):
    return Students(networks, make_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, eps=1e-5, weight_decay=1e-4),
                    weights=weights, temperature=1.5, max_grad_norm=max_grad_norm, batched=batched)


def _lot_steps(teacher, students, teacher_opt, batches, detach):
    """LoT minibatch steps: teacher loss with the penalty, students' imitation, one backward, each network stepped."""
    for obs in batches:
        teacher_logits = teacher(obs)
        student_logits = students.logits(obs)
        loss = (teacher_logits.square().mean() + 0.5 * students.penalty(teacher_logits, student_logits, detach=detach)
                + students.imitation_loss(student_logits, teacher_logits, detach=detach))
        teacher_opt.zero_grad()
        students.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(teacher.parameters(), 0.5)
        teacher_opt.step()
        students.step()


@pytest.mark.parametrize("num_students, weights, detach, channels_last", [
    (2, None, True, False), (3, [0.5, 0.3, 0.2], True, True), (2, [0.9, 0.1], False, False)])
def test_batched_students_equal_sequential_ones_after_steps(num_students, weights, detach, channels_last, device):
    """Parameters, gradients and Adam moments after a few LoT steps equal those of K separate networks, with
    each student's own lambda_i (with --no-detach they reach the students' gradients), clipping and Adam."""
    torch.manual_seed(0)
    teacher = lot.StudentPolicy(5, obs_shape=MINATAR).to(device)
    networks = [lot.StudentPolicy(5, obs_shape=MINATAR).to(device) for _ in range(num_students)]
    if channels_last:
        networks = [net.to(memory_format=torch.channels_last) for net in networks]
    batches = [torch.randint(0, 2, (64, *MINATAR), dtype=torch.uint8, device=device) for _ in range(3)]
    runs = {}
    for batched in (False, True):
        run_teacher = copy.deepcopy(teacher)
        students = _students(copy.deepcopy(networks), weights, batched)
        _lot_steps(run_teacher, students, torch.optim.Adam(run_teacher.parameters(), lr=1e-2), batches, detach)
        runs[batched] = run_teacher, students
    (teacher_a, seq), (teacher_b, bat) = runs[False], runs[True]
    assert bat.stack is not None and seq.stack is None
    for a, b in zip(teacher_a.parameters(), teacher_b.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for net_a, net_b, opt_a, opt_b in zip(seq.networks, bat.networks, seq.optimizers, bat.optimizers):
        for a, b in zip(net_a.parameters(), net_b.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(opt_b.state[b]["exp_avg_sq"], opt_a.state[a]["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    # the students really moved, and apart from each other
    first = [p.detach().clone() for p in networks[0].parameters()]
    assert any(not torch.allclose(p, q) for p, q in zip(bat.networks[0].parameters(), first))
    assert not torch.allclose(bat.networks[0].actor.weight, bat.networks[1].actor.weight)


def test_gradient_clipping_stays_per_student():
    """Each student's gradient is clipped to its own norm (a student with large gradients does not shrink
    another's), as K separate clip_grad_norm_ calls do."""
    torch.manual_seed(0)
    networks = [nn.Linear(6, 3), nn.Linear(6, 3)]
    with torch.no_grad():
        networks[1].weight.mul_(100)  # far from the target: a gradient far above the clip
    students = _students(networks, None, batched=True, max_grad_norm=0.1)
    x, target = torch.randn(32, 6), torch.randn(32, 3)
    students.imitation_loss(students.logits(x), target).backward()
    raw = [torch.cat([p.grad.flatten() for p in net.parameters()]).norm().item() for net in students.networks]
    seen = []  # the clip happens inside step(): read the norms it leaves through the optimizers' pre-hooks
    students.optimizers[0].register_step_pre_hook(lambda *a: seen.append(_grad_norm(students.networks[0])))
    students.optimizers[1].register_step_pre_hook(lambda *a: seen.append(_grad_norm(students.networks[1])))
    students.step()
    assert raw[1] > 1.0
    assert seen[1] == pytest.approx(0.1, rel=1e-4)
    assert seen[0] == pytest.approx(min(raw[0], 0.1), rel=1e-4)


def _grad_norm(net: nn.Module) -> float:
    return torch.cat([p.grad.flatten() for p in net.parameters()]).norm().item()


def test_batched_and_sequential_checkpoints_load_into_each_other():
    """Students save one state dict per student in both forms: a sequential run's checkpoint resumes batched
    (and back), with the same next step."""
    torch.manual_seed(0)
    x, target = torch.randint(0, 2, (32, *MINATAR), dtype=torch.uint8), torch.randn(32, 5)
    make = lambda batched: _students([lot.StudentPolicy(5, obs_shape=MINATAR) for _ in range(2)], None, batched)
    for saved_batched in (False, True):
        saved = make(saved_batched)
        saved.imitate(x, target)
        state = copy.deepcopy(saved.state_dict())
        assert all(isinstance(sd, dict) for sd in state["networks"]) and len(state["optimizers"]) == 2
        restored = make(not saved_batched)
        restored.load_state_dict(state)
        saved.imitate(x, target)
        restored.imitate(x, target)
        for a, b in zip(saved.networks.parameters(), restored.networks.parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_stack_keeps_layout_and_follows_moves():
    networks = [lot.StudentPolicy(4).to(memory_format=torch.channels_last) for _ in range(2)]
    stack = StudentStack(networks)
    conv = networks[1].network[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert conv.data_ptr() == stack.stacked["network.0.weight"][1].data_ptr()  # a view of the stack
    students = _students(networks, None, batched=True)
    students.to(torch.float64)  # a move gives the parameters new storage: the stack follows
    assert students.stack.stacked["actor.weight"].dtype == torch.float64
    assert networks[0].actor.weight.data_ptr() == students.stack.stacked["actor.weight"][0].data_ptr()


def test_stacking_obstacles():
    assert stacking_obstacle([nn.Linear(3, 2), nn.Linear(3, 2)]) is None
    assert "classes" in stacking_obstacle([nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2))])
    assert "differ" in stacking_obstacle([nn.Linear(3, 2), nn.Linear(4, 2)])
    assert "buffers" in stacking_obstacle([nn.BatchNorm1d(3), nn.BatchNorm1d(3)])
    with pytest.raises(ValueError, match="cannot be batched"):
        Students([nn.Linear(3, 2), nn.Linear(4, 2)], make_optimizer=lambda p: torch.optim.SGD(p, lr=0.1), batched=True)


@pytest.mark.filterwarnings("ignore:--precision bf16:RuntimeWarning")
@pytest.mark.parametrize("obs_shape", [lot.ATARI_FRAMES, MINATAR])
def test_batched_students_under_bf16_autocast_compute_what_sequential_ones_do(obs_shape, device):
    """autocast does not reach inside vmap: the stack does its casts, so batched students run in bf16 as
    sequential ones do under autocast (Atari frames scaled to bf16, MinAtar grids in fp32 cast at the first
    layer), with fp32 gradients for the fp32 weights."""
    torch.manual_seed(0)
    networks = [lot.StudentPolicy(4, obs_shape=obs_shape).to(device, memory_format=torch.channels_last)
                for _ in range(2)]
    x = torch.randint(0, 2 if obs_shape == MINATAR else 256, (8, *obs_shape), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    grads = {}
    for batched in (False, True):
        students = _students(copy.deepcopy(networks), None, batched)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = students.logits(x)
        assert all(l.dtype == torch.bfloat16 for l in logits)
        sum(l.float().square().sum() for l in logits).backward()
        grads[batched] = [p.grad for p in students.networks.parameters()]
        assert all(g.dtype == torch.float32 for g in grads[batched])
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-5)


def test_batching_mode_auto_is_on_with_cuda_only_and_needs_two_students():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert batch_students_here("auto", 2, cuda) and not batch_students_here("auto", 2, cpu)
    assert batch_students_here("on", 2, cpu) and not batch_students_here("on", 1, cpu)
    assert not batch_students_here("off", 4, cuda)
    with pytest.raises(LoTUserError, match="--batch-students 'yes'"):
        batch_students_here("yes", 2, cpu)
    args = lot.Args(num_students=3, batch_students="on")
    assert lot.make_students(args, 4, cpu, lot.lr_factor(args)).stack is not None
