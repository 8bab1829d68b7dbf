"""LoTCallback on stock SB3 PPO/A2C: gradient equality, student updates, logging, save/resume, errors, real runs."""

from __future__ import annotations

import copy
import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("stable_baselines3")

from stable_baselines3 import A2C, DQN, PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback, CallbackList  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.utils import set_random_seed  # noqa: E402

from lot_rl.errors import LoTUserError  # noqa: E402
from lot_rl.regularizer import student_loss, teachability_kl  # noqa: E402
from lot_rl.sb3 import LoTCallback, companion_path  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (see conftest.py)


def cartpole(n_envs: int = 2, seed: int = 0):
    return make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed)


def fresh_policy_like(policy):
    clone = type(policy)(**policy._get_constructor_parameters())
    clone.load_state_dict(policy.state_dict())
    return clone


class Recorder(BaseCallback):
    """Records, for every teacher optimizer step: its minibatch, the teacher's parameters before the step,
    the gradients SB3 stepped with, and the students' parameters that made that minibatch's penalty (the
    students step on a minibatch only after the teacher has, so those are the students at the teacher's step)."""

    def __init__(self, lot: LoTCallback):
        super().__init__()
        self.lot = lot
        self.steps: list[dict] = []

    def _on_training_start(self) -> None:
        model = self.model
        self.batches = []
        original_get = model.rollout_buffer.get

        def recording_get(batch_size=None):
            for data in original_get(batch_size):
                self.batches.append(data)
                yield data

        model.rollout_buffer.get = recording_get

        def teacher_pre_step(optimizer, args, kwargs):
            self.steps.append({
                "batch": self.batches[-1],
                "teacher": copy.deepcopy(model.policy.state_dict()),
                "grads": [p.grad.detach().clone() for p in model.policy.parameters()],
                "students": self._students_now(),
            })

        model.policy.optimizer.register_step_pre_hook(teacher_pre_step)

    def _students_now(self):
        return [copy.deepcopy(net) for net in self.lot.students.networks]

    def _on_step(self) -> bool:
        return True


class KeepRollouts(BaseCallback):
    """Keeps a copy of every rollout's observations, one row per state (CartPole), as the cache stores them."""

    def __init__(self):
        super().__init__()
        self.rollouts: list[torch.Tensor] = []

    def _on_rollout_end(self) -> None:
        self.rollouts.append(torch.as_tensor(self.model.rollout_buffer.observations.reshape(-1, 4)).clone())

    def _on_step(self) -> bool:
        return True


def sharpen(model, lot):
    """Make teacher and students disagree clearly, so that the penalty matters in the gradient."""
    with torch.no_grad():
        model.policy.action_net.weight.normal_(0, 1.0)
        for net in lot.students.networks:
            net.policy.action_net.weight.normal_(0, 1.0)


def explicit_ppo_loss(model, policy, data):
    """PPO's clipped loss written out from the paper's equations (no LoT)."""
    actions = data.actions.long().flatten()
    dist = policy.get_distribution(data.observations)
    log_prob = dist.log_prob(actions)
    values = policy.predict_values(data.observations).flatten()
    adv = data.advantages
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = torch.exp(log_prob - data.old_log_prob)
    clip = model.clip_range(1.0)
    policy_loss = -torch.min(adv * ratio, adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    value_loss = F.mse_loss(data.returns, values)
    entropy_loss = -dist.entropy().mean()
    loss = policy_loss + model.ent_coef * entropy_loss + model.vf_coef * value_loss
    return loss, dist.distribution.logits


@pytest.mark.parametrize("ent_coef", [0.01, 0.0])
@pytest.mark.parametrize("imitate", [True, False])
def test_teacher_gradient_is_ppo_plus_teachability_penalty(ent_coef, imitate):
    torch.manual_seed(0)
    model = PPO("MlpPolicy", cartpole(), n_steps=32, batch_size=16, n_epochs=2, ent_coef=ent_coef,
                max_grad_norm=0.5, seed=0, device="cpu")
    lot = LoTCallback(alpha=0.7, num_students=2, student_weights=[0.25, 0.75], temperature=1.5,
                      student_steps_ratio=1, obs_num=2, student_on_ppo_batches=imitate)
    lot.init_callback(model)  # builds the students now, so that they can be sharpened
    sharpen(model, lot)
    recorder = Recorder(lot)
    model.learn(64, callback=CallbackList([recorder, lot]))

    assert len(recorder.steps) == 2 * 4  # 2 epochs x 4 minibatches, every one checked
    penalties = []
    for step in recorder.steps:
        teacher = fresh_policy_like(model.policy)
        teacher.load_state_dict(step["teacher"])
        data = step["batch"]
        ppo_loss, teacher_logits = explicit_ppo_loss(model, teacher, data)
        student_logits = [net(data.observations) for net in step["students"]]
        penalty = teachability_kl(teacher_logits, student_logits, 1.5, [0.25, 0.75])
        penalties.append(float(penalty.detach()))

        teacher.zero_grad()
        (ppo_loss + 0.7 * penalty).backward(retain_graph=True)
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), 0.5)
        expected = [p.grad for p in teacher.parameters()]
        for got, want in zip(step["grads"], expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

        # The check can fail: PPO alone gives clearly different gradients.
        teacher.zero_grad()
        ppo_loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), 0.5)
        names = [name for name, _ in teacher.named_parameters()]
        got_head = step["grads"][names.index("action_net.weight")]
        assert float((got_head - teacher.action_net.weight.grad).norm() / got_head.norm()) > 0.05

    # SB3's own train/loss is the PPO loss of the last minibatch, without the penalty.
    teacher = fresh_policy_like(model.policy)
    teacher.load_state_dict(recorder.steps[-1]["teacher"])
    last_ppo_loss, _ = explicit_ppo_loss(model, teacher, recorder.steps[-1]["batch"])
    assert model.logger.name_to_value["train/loss"] == pytest.approx(float(last_ppo_loss.detach()), rel=1e-5)
    assert model.logger.name_to_value["lot/teacher_kl"] == pytest.approx(np.mean(penalties), rel=1e-4)
    assert "evaluate_actions" not in model.policy.__dict__  # SB3's method is back after learn()


def test_a2c_gradient_is_a2c_plus_teachability_penalty():
    torch.manual_seed(1)
    model = A2C("MlpPolicy", cartpole(), n_steps=8, ent_coef=0.0, seed=1, device="cpu")
    lot = LoTCallback(alpha=0.5, num_students=1, student_steps_ratio=1, obs_num=1,
                      student_on_ppo_batches=False)
    lot.init_callback(model)
    sharpen(model, lot)
    recorder = Recorder(lot)
    model.learn(16, callback=CallbackList([recorder, lot]))
    step = recorder.steps[0]
    teacher = fresh_policy_like(model.policy)
    teacher.load_state_dict(step["teacher"])
    data = step["batch"]
    dist = teacher.get_distribution(data.observations)
    values = teacher.predict_values(data.observations).flatten()
    loss = -(data.advantages * dist.log_prob(data.actions.long().flatten())).mean() \
        + model.vf_coef * F.mse_loss(data.returns, values)
    loss = loss + 0.5 * teachability_kl(dist.distribution.logits, [step["students"][0](data.observations)])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(teacher.parameters(), model.max_grad_norm)
    for got, p in zip(step["grads"], teacher.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-6)


def test_with_target_kl_students_step_only_on_minibatches_the_teacher_trains_on():
    """Issue 12, bug 5: SB3 ends an epoch at a minibatch whose approx KL passes 1.5 x target_kl, after
    evaluate_actions and before its backward: the students must not step on that minibatch either."""
    model = PPO("MlpPolicy", cartpole(), n_steps=32, batch_size=16, n_epochs=4, target_kl=1e-4, seed=12,
                device="cpu")
    lot = LoTCallback(student_steps_ratio=0, obs_num=1)
    lot.init_callback(model)
    teacher_steps, student_steps = [], []
    model.policy.optimizer.register_step_pre_hook(lambda *args: teacher_steps.append(model.num_timesteps))
    lot.students.optimizers[0].register_step_pre_hook(lambda *args: student_steps.append(model.num_timesteps))
    model.learn(3 * 64, callback=lot)
    assert 3 <= len(teacher_steps) < 3 * 4 * 4  # every update trained, and stopped early
    assert student_steps == teacher_steps
    assert model.logger.name_to_value["lot/student_steps"] == teacher_steps.count(teacher_steps[-1])


def test_student_minibatches_is_lot_rl_trains_option_with_its_default():
    """Issue 12, bug 5: the student phase cut each cached rollout by SB3's batch_size (64 by default: 16
    minibatches of an 8 x 128 rollout) where lot-rl train takes 4; now both have student_minibatches=4."""
    from lot_rl.agents.ppo_lot_atari import Args

    assert LoTCallback().student_minibatches == Args().student_minibatches == 4
    for minibatches, expected in ((None, 2 * 4), (2, 2 * 2)):
        model = PPO("MlpPolicy", cartpole(), n_steps=16, batch_size=4, n_epochs=1, seed=13, device="cpu")
        options = {} if minibatches is None else {"student_minibatches": minibatches}
        model.learn(32, callback=LoTCallback(student_steps_ratio=2, obs_num=1, student_on_ppo_batches=False,
                                             **options))
        assert model.logger.name_to_value["lot/student_steps"] == expected  # passes x rollouts x minibatches
    with pytest.raises(TypeError, match="student_batch_size was replaced by student_minibatches"):
        LoTCallback(student_batch_size=64)


def test_a_companion_file_with_student_batch_size_loads_with_a_warning(tmp_path):
    from lot_rl.checkpoint import load_checkpoint, save_checkpoint

    model = PPO("MlpPolicy", cartpole(), n_steps=16, batch_size=16, n_epochs=1, seed=14, device="cpu")
    lot = LoTCallback(student_steps_ratio=1, obs_num=1)
    model.learn(32, callback=lot)
    data = load_checkpoint(lot.save(tmp_path / "old"))
    del data["options"]["student_minibatches"]
    data["options"]["student_batch_size"] = None  # as an earlier lot_rl wrote it
    header = ("format", "version", "kind", "path")
    save_checkpoint(tmp_path / "old.lot.pt", data["kind"], {k: v for k, v in data.items() if k not in header})
    with pytest.warns(UserWarning, match="student_batch_size of an earlier lot_rl, replaced by student_minibatches"):
        restored = LoTCallback.load(tmp_path / "old")
    assert restored.options() == lot.options()


def test_student_phase_is_n_passes_of_imitation_over_the_cached_rollouts():
    torch.manual_seed(2)
    model = PPO("MlpPolicy", cartpole(), n_steps=16, batch_size=8, n_epochs=1, seed=2, device="cpu")
    keep = KeepRollouts()
    rollouts = keep.rollouts
    lot = LoTCallback(alpha=0.5, num_students=2, student_steps_ratio=3, obs_num=2,
                      student_on_ppo_batches=False, batch_students="on")
    model.learn(3 * 32, callback=CallbackList([keep, lot]))
    assert lot.students.stack is not None  # two students of one architecture run batched...
    # The cache holds real copies of the last obs_num rollouts, oldest first.
    assert lot.updates == 3 and len(lot.cache) == 2
    for cached, kept in zip(lot.cache.entries(), rollouts[-2:]):
        torch.testing.assert_close(cached, kept)
    # N passes x cached rollouts x (32 states / batch 8) student steps in the last phase.
    assert model.logger.name_to_value["lot/student_steps"] == 3 * 2 * 4

    # A sharper teacher, then one more student phase replayed by hand: teacher targets on the cache,
    # shuffled minibatches, student_loss, clipping at max_grad_norm, Adam (teacher's lr, weight decay 1e-4),
    # one network after another (...with the same math as the batched students).
    with torch.no_grad():
        model.policy.action_net.weight.normal_(0, 2.0)
    replica = [copy.deepcopy(net) for net in lot.students.networks]
    optimizers = [torch.optim.Adam(net.parameters(), lr=model.policy.optimizer.param_groups[0]["lr"], eps=1e-5,
                                   weight_decay=1e-4) for net in replica]
    for opt, real in zip(optimizers, lot.students.optimizers):
        opt.load_state_dict(copy.deepcopy(real.state_dict()))  # torch shares state tensors otherwise
    entries = lot.cache.entries()
    with torch.no_grad():
        targets = [model.policy.get_distribution(e).distribution.logits for e in entries]
        obs, all_targets = torch.cat(entries), torch.cat(targets)
        kl_before = float(teachability_kl(all_targets, lot.students.logits(obs)))
    torch.manual_seed(123)
    lot.student_phase()
    torch.manual_seed(123)
    for _ in range(3):
        for entry, target in zip(entries, targets):
            order = torch.randperm(entry.shape[0])
            for start in range(0, entry.shape[0], 8):
                rows = order[start:start + 8]
                for net, opt in zip(replica, optimizers):
                    opt.zero_grad()
                    student_loss(net(entry[rows]), target[rows]).backward()
                    nn.utils.clip_grad_norm_(net.parameters(), model.max_grad_norm)
                    opt.step()
    for net, want in zip(lot.students.networks, replica):
        for p, q in zip(net.parameters(), want.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)

    # Imitation works: a few more phases take the students much closer to the new teacher.
    for _ in range(5):
        lot.student_phase()
    with torch.no_grad():
        kl_after = float(teachability_kl(all_targets, lot.students.logits(obs)))
    assert kl_before > 0.05 and kl_after < 0.5 * kl_before


def test_lot_scalars_reach_sb3_logger_csv_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = PPO("MlpPolicy", cartpole(), n_steps=16, batch_size=16, n_epochs=1, seed=3, device="cpu")
    model.set_logger(configure(str(tmp_path), ["csv", "tensorboard"]))
    model.learn(4 * 32, callback=LoTCallback(alpha=0.5, student_steps_ratio=1, obs_num=2))
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    logged = [r for r in rows if r["lot/teacher_kl"]]
    assert len(logged) == 3  # updates 1-3 are dumped with rollouts 2-4 (as SB3's train/* values are)
    for row in logged:
        assert float(row["lot/teacher_kl"]) >= 0 and np.isfinite(float(row["lot/student_kl"]))
        assert row["train/loss"]
    events = EventAccumulator(str(tmp_path)).Reload()
    tags = events.Tags()["scalars"]
    assert "lot/teacher_kl" in tags and "lot/student_kl" in tags
    assert len(events.Scalars("lot/student_kl")) == 3


def test_save_load_resume_continues_with_the_same_students(tmp_path):
    path = tmp_path / "ppo_cartpole"

    def continue_training(model, lot):
        model.set_env(cartpole(seed=7))  # the same fresh env state for both runs
        set_random_seed(11)  # torch (actions, student minibatches) and numpy (PPO minibatches)
        model.learn(2 * 32, callback=lot, reset_num_timesteps=False)

    torch.manual_seed(4)
    model = PPO("MlpPolicy", cartpole(), n_steps=16, batch_size=16, n_epochs=2, seed=4, device="cpu")
    lot = LoTCallback(alpha=0.5, num_students=2, student_steps_ratio=2, obs_num=3)
    model.learn(2 * 32, callback=lot)
    model.save(path)
    written = lot.save(path)
    assert written == companion_path(str(path) + ".zip") == tmp_path / "ppo_cartpole.lot.pt"

    restored_model = PPO.load(path, device="cpu")
    restored = LoTCallback.load(path)
    assert restored.options() == lot.options()
    restored.init_callback(restored_model)
    for a, b in zip(lot.students.networks.parameters(), restored.students.networks.parameters()):
        assert torch.equal(a, b)
    assert lot.students.optimizers[1].state_dict()["state"][0]["exp_avg"].equal(
        restored.students.optimizers[1].state_dict()["state"][0]["exp_avg"])
    for a, b in zip(lot.cache.entries(), restored.cache.entries()):
        assert torch.equal(a, b)

    before = [p.clone() for p in lot.students.networks.parameters()]
    continue_training(model, lot)
    continue_training(restored_model, restored)
    assert restored.updates == lot.updates == 4
    for a, b, old in zip(lot.students.networks.parameters(), restored.students.networks.parameters(), before):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, old) for a, old in zip(lot.students.networks.parameters(), before))
    for a, b in zip(model.policy.parameters(), restored_model.policy.parameters()):
        assert torch.equal(a, b)


def test_custom_student_network_and_its_reload(tmp_path):
    def make_student():
        return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))

    model = PPO("MlpPolicy", cartpole(), n_steps=16, batch_size=16, n_epochs=1, seed=5, device="cpu")
    given = make_student()
    lot = LoTCallback(num_students=2, student=given, student_steps_ratio=1, obs_num=1)
    model.learn(32, callback=lot)
    assert lot.students.networks[0].network is given
    assert not torch.equal(lot.students.networks[1].network[0].weight, given[0].weight)  # re-initialised copy
    lot.save(tmp_path / "m")
    with pytest.raises(LoTUserError, match="student="):
        LoTCallback.load(tmp_path / "m")
    restored = LoTCallback.load(tmp_path / "m", student=make_student())
    restored.init_callback(model)
    torch.testing.assert_close(restored.students.networks[0].network[2].weight, given[2].weight)

    with pytest.raises(LoTUserError, match=r"student 0 returns logits of shape \(2, 3\)"):
        model.learn(32, callback=LoTCallback(student=nn.Linear(4, 3)))


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": -0.1}, "alpha must be >= 0"),
    ({"obs_num": 0}, "obs_num must be >= 1"),
    ({"num_students": 0}, "num_students must be >= 1"),
    ({"temperature": 0}, "temperature must be > 0"),
    ({"student_weights": [1.0, 2.0]}, "LoTCallback: student_weights has 2 values for 1 students"),
    ({"student_weights": [-1.0]}, r"student_weights must be >= 0, got \[-1.0\]"),
    ({"cache_mode": "views"}, "unknown cache_mode 'views'; choose one of copies, reference"),
    ({"student_steps_ratio": 0, "student_on_ppo_batches": False}, "students never learn"),
    ({"student_steps_ratio": -1}, "student_steps_ratio must be >= 0"),
    ({"student_minibatches": 0}, "student_minibatches must be >= 1, got 0"),
    ({"student_lr": 0.0}, r"student_lr must be > 0 \(leave it out to follow the teacher's learning rate\), got 0.0"),
])
def test_bad_options_fail_at_construction(kwargs, message):
    with pytest.raises(LoTUserError, match=message):
        LoTCallback(**kwargs)


def test_incompatible_models_fail_at_learn_start():
    pendulum = make_vec_env("Pendulum-v1", n_envs=1)
    with pytest.raises(LoTUserError, match=r"discrete action space .*Box"):
        PPO("MlpPolicy", pendulum, n_steps=16, batch_size=16, device="cpu").learn(16, callback=LoTCallback())
    with pytest.raises(LoTUserError, match="on-policy PPO or A2C .* got DQN"):
        DQN("MlpPolicy", cartpole(1), learning_starts=0, device="cpu").learn(16, callback=LoTCallback())
    # An attribute changed after construction is caught at learn() start too.
    lot = LoTCallback()
    lot.obs_num = 0
    with pytest.raises(LoTUserError, match="obs_num must be >= 1"):
        PPO("MlpPolicy", cartpole(1), n_steps=16, batch_size=16, device="cpu").learn(16, callback=lot)


def test_short_cartpole_learn():
    torch.manual_seed(6)
    model = PPO("MlpPolicy", cartpole(4), n_steps=32, batch_size=64, n_epochs=4, ent_coef=0.0, seed=6, device="cpu")
    lot = LoTCallback(alpha=0.5, num_students=1, student_steps_ratio=5, obs_num=10)
    model.learn(3 * 128, callback=lot)
    assert lot.updates == 3 and len(lot.cache) == 3
    assert model.num_timesteps == 384
    # 5 passes x min(update, 3) cached rollouts x 4 minibatches, plus 4 epochs x 2 PPO minibatches per update
    assert model.logger.name_to_value["lot/student_steps"] == 5 * 3 * 4 + 8
    assert np.isfinite(model.logger.name_to_value["lot/teacher_kl"])
    assert "evaluate_actions" not in model.policy.__dict__


def test_short_breakout_learn_with_cnn_policy(tmp_path):
    gym = pytest.importorskip("gymnasium")
    ale_py = pytest.importorskip("ale_py")
    gym.register_envs(ale_py)
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import VecFrameStack

    torch.manual_seed(7)
    env = VecFrameStack(make_atari_env("BreakoutNoFrameskip-v4", n_envs=2, seed=7), n_stack=4)
    model = PPO("CnnPolicy", env, n_steps=32, batch_size=32, n_epochs=1, ent_coef=0.01, seed=7, device="cpu")
    lot = LoTCallback(alpha=0.5, num_students=1, student_steps_ratio=1, obs_num=2)
    lot.init_callback(model)
    recorder = Recorder(lot)
    model.learn(3 * 64, callback=CallbackList([recorder, lot]))
    assert lot.updates == 3
    # The CNN teacher's gradient is PPO + penalty here too (first minibatch of the last update).
    step = recorder.steps[-2]
    teacher = fresh_policy_like(model.policy)
    teacher.load_state_dict(step["teacher"])
    ppo_loss, teacher_logits = explicit_ppo_loss(model, teacher, step["batch"])
    penalty = teachability_kl(teacher_logits, [step["students"][0](step["batch"].observations)])
    (ppo_loss + 0.5 * penalty).backward()
    torch.nn.utils.clip_grad_norm_(teacher.parameters(), model.max_grad_norm)
    for got, p in zip(step["grads"], teacher.parameters()):
        # Our explicit loss runs the trunk twice (policy and value), SB3 once: float32 sums in another order.
        assert float((got - p.grad).norm()) <= 1e-4 * float(p.grad.norm())
    entries = lot.cache.entries()
    assert len(entries) == 2 and entries[0].shape == (64, 4, 84, 84) and entries[0].dtype == torch.uint8
    student = lot.students.networks[0].policy
    assert type(student.features_extractor).__name__ == "NatureCNN"
    assert not torch.equal(student.action_net.weight, model.policy.action_net.weight)
    assert model.logger.name_to_value["lot/student_steps"] == 2 * 4 + 2  # phase + one per PPO minibatch
    model.save(tmp_path / "breakout")
    lot.save(tmp_path / "breakout")
    restored = LoTCallback.load(tmp_path / "breakout")
    restored.init_callback(PPO.load(tmp_path / "breakout", env=env, device="cpu"))
    torch.testing.assert_close(restored.students.networks[0].policy.action_net.weight, student.action_net.weight)


def test_interrupted_learn_leaves_no_penalty_behind():
    model = PPO("MlpPolicy", cartpole(), n_steps=16, batch_size=16, n_epochs=1, seed=8, device="cpu")
    lot = LoTCallback(student_steps_ratio=1, obs_num=1)

    def interrupt(optimizer, args, kwargs):
        raise KeyboardInterrupt

    handle = model.policy.optimizer.register_step_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.learn(64, callback=lot)
    handle.remove()
    assert "evaluate_actions" in model.policy.__dict__  # learn() never reached its end
    batches = lot._teacher_batches
    model.learn(32, reset_num_timesteps=False)  # plain PPO now: the stale wrapper steps aside
    assert "evaluate_actions" not in model.policy.__dict__
    assert lot._teacher_batches == batches


def test_a_train_that_ignores_log_prob_is_reported():
    class ValueOnlyPPO(PPO):
        def train(self) -> None:
            for data in self.rollout_buffer.get(self.batch_size):
                values, _, _ = self.policy.evaluate_actions(data.observations, data.actions.long().flatten())
                loss = F.mse_loss(values.flatten(), data.returns)
                self.policy.optimizer.zero_grad()
                loss.backward()
                self.policy.optimizer.step()

    model = ValueOnlyPPO("MlpPolicy", cartpole(), n_steps=16, batch_size=16, device="cpu")
    with pytest.raises(RuntimeError, match="never reached ValueOnlyPPO.train"):
        model.learn(32, callback=LoTCallback(student_steps_ratio=1, obs_num=1))


def test_load_without_cache_or_with_a_smaller_cache(tmp_path):
    model = PPO("MlpPolicy", cartpole(), n_steps=16, batch_size=16, n_epochs=1, seed=9, device="cpu")
    lot = LoTCallback(student_steps_ratio=1, obs_num=3)
    model.learn(3 * 32, callback=lot)
    latest = lot.cache.entries()[-1]
    lot.save(tmp_path / "full")
    lot.save(tmp_path / "light", include_cache=False)
    assert (tmp_path / "light.lot.pt").stat().st_size < (tmp_path / "full.lot.pt").stat().st_size

    without_cache = LoTCallback.load(tmp_path / "light")
    without_cache.init_callback(model)
    assert len(without_cache.cache) == 0 and without_cache.updates == 3

    smaller = LoTCallback.load(tmp_path / "full", obs_num=1)
    smaller.init_callback(model)
    assert len(smaller.cache) == 1 and torch.equal(smaller.cache.entries()[0], latest)
    smaller.cache.append(latest + 1)  # the ring buffer still works after the resize
    assert len(smaller.cache) == 1 and torch.equal(smaller.cache.entries()[0], latest + 1)

    with pytest.raises(LoTUserError, match="unknown option"):
        LoTCallback.load(tmp_path / "full", obs_nmu=1)
    with pytest.raises(LoTUserError, match="no checkpoint"):
        LoTCallback.load(tmp_path / "missing")


def test_a_reloaded_run_with_another_n_envs_restarts_the_cache_with_real_rollouts(tmp_path):
    """Issue 12, bug 1, as SB3 users meet it: LoTCallback.load on a model loaded with another n_envs kept the old
    count of cache entries over a reallocated buffer, and the students imitated uninitialised memory."""
    model = PPO("MlpPolicy", cartpole(2), n_steps=16, batch_size=16, n_epochs=1, seed=15, device="cpu")
    lot = LoTCallback(student_steps_ratio=1, obs_num=3)
    model.learn(2 * 32, callback=lot)
    model.save(tmp_path / "m")
    lot.save(tmp_path / "m")
    model = PPO.load(tmp_path / "m", env=cartpole(4), device="cpu")
    lot = LoTCallback.load(tmp_path / "m")
    keep = KeepRollouts()
    model.learn(64, callback=CallbackList([keep, lot]), reset_num_timesteps=False)
    entries = lot.cache.entries()
    assert len(lot.cache) == len(entries) == 1 and torch.equal(entries[0], keep.rollouts[-1])


def test_the_earlier_option_name_is_still_accepted(tmp_path):
    assert LoTCallback(imitate_on_teacher_batches=False).student_on_ppo_batches is False
    with pytest.raises(TypeError, match="unexpected keyword argument 'imitate'"):
        LoTCallback(imitate=False)
    # a companion file written when the option had its earlier name
    from lot_rl.checkpoint import load_checkpoint, save_checkpoint

    model = PPO("MlpPolicy", cartpole(), n_steps=16, batch_size=16, n_epochs=1, seed=10, device="cpu")
    lot = LoTCallback(student_steps_ratio=1, obs_num=1, student_on_ppo_batches=False)
    model.learn(32, callback=lot)
    data = load_checkpoint(lot.save(tmp_path / "old"))
    data["options"]["imitate_on_teacher_batches"] = data["options"].pop("student_on_ppo_batches")
    header = ("format", "version", "kind", "path")
    save_checkpoint(tmp_path / "old.lot.pt", data["kind"], {k: v for k, v in data.items() if k not in header})
    assert LoTCallback.load(tmp_path / "old").options() == lot.options()
    assert LoTCallback.load(tmp_path / "old", imitate_on_teacher_batches=True).student_on_ppo_batches is True
