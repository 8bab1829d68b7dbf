"""The compute floor in scripts/benchmark_throughput.py counts what the networks really do."""

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lot_update_flops_equal_the_count_from_layer_shapes(load_script):
    bench = load_script("benchmark_throughput")
    # Nature CNN on one 4x84x84 frame: multiply-adds of each layer (output size x kernel volume)
    conv1 = 20 * 20 * 32 * (8 * 8 * 4)
    trunk = conv1 + 9 * 9 * 64 * (4 * 4 * 32) + 7 * 7 * 64 * (3 * 3 * 64) + 3136 * 512
    policy_forward = 2 * (trunk + 512 * 4)  # a student, or the teacher's logits
    teacher_forward = 2 * (trunk + 512 * 4 + 512 * 1)  # with the value head
    # backward: the weights' gradient costs a forward, the inputs' gradient too, except for the first
    # convolution (the frames need none)
    student_train = 3 * policy_forward - 2 * conv1
    teacher_train = 3 * teacher_forward - 2 * conv1
    obs_num, passes, frames = 2, 3, 1024

    flops = bench.lot_update_flops(obs_num=obs_num, student_steps_ratio=passes)

    # rollout: the teacher acts on every frame; PPO: 4 epochs over the rollout, teacher and student both learn
    assert flops["teacher"] == frames * teacher_forward + 4 * frames * (teacher_train + student_train)
    # student phase: the teacher's targets once per cached frame, then N passes of imitation over the cache
    assert flops["student"] == obs_num * frames * policy_forward + passes * obs_num * frames * student_train
    assert flops["total"] == flops["teacher"] + flops["student"]
