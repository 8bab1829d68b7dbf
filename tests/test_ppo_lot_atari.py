"""The single-file agent: CleanRL's PPO loss, GAE, the LoT terms in the update, `lot-rl train`, resume."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from torch.distributions.categorical import Categorical
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lot_rl import config as cfg_lib
from lot_rl.agents import ppo_lot_atari as lot
from lot_rl.checkpoint import load_checkpoint, save_checkpoint
from lot_rl.cli import main
from lot_rl.errors import LoTUserError
from lot_rl.regularizer import kl
from lot_rl.runlog import read_metrics
from lot_rl.video import probe


def _batch(n=16, num_actions=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(obs=torch.randint(0, 256, (n, 4, 84, 84), generator=g, dtype=torch.uint8),
                actions=torch.randint(0, num_actions, (n,), generator=g),
                old_logprobs=-torch.rand(n, generator=g) - 1.0,
                advantages=torch.randn(n, generator=g), returns=torch.randn(n, generator=g),
                old_values=torch.randn(n, generator=g))


def _cleanrl_loss_by_hand(agent, b, clip=0.1, ent=0.01, vf=0.5):
    """CleanRL's PPO loss written out independently (log-softmax gather, explicit entropy)."""
    h = agent.network(b["obs"].float() / 255.0)
    logits, value = agent.actor(h), agent.critic(h).view(-1)
    logp_all = F.log_softmax(logits, -1)
    logp = logp_all.gather(1, b["actions"].view(-1, 1)).view(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    adv = b["advantages"]
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    ratio = torch.exp(logp - b["old_logprobs"])
    pg = torch.mean(torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)))
    v_clipped = b["old_values"] + (value - b["old_values"]).clamp(-clip, clip)
    v = 0.5 * torch.mean(torch.maximum((value - b["returns"]) ** 2, (v_clipped - b["returns"]) ** 2))
    return pg - ent * entropy + vf * v, logits


def test_ppo_loss_matches_independent_cleanrl_computation():
    torch.manual_seed(0)
    agent, b, args = lot.Agent(4), _batch(), lot.Args()
    ours, stats, _ = lot.ppo_loss(agent, b["obs"], b["actions"], b["old_logprobs"], b["advantages"],
                                  b["returns"], b["old_values"], args)
    ours_grads = torch.autograd.grad(ours, list(agent.parameters()))
    expected, _ = _cleanrl_loss_by_hand(agent, b)
    expected_grads = torch.autograd.grad(expected, list(agent.parameters()))
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    for g1, g2 in zip(ours_grads, expected_grads):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)
    assert 0.0 <= stats["clipfrac"].item() <= 1.0


def test_ppo_loss_leaves_forced_steps_out_as_if_they_were_never_in_the_minibatch():
    """Issue 18: the steps whose action the env forced (LifeLossRestart's hidden steps) weigh nothing: the
    masked loss, its gradients and its statistics equal CleanRL's loss on the agent's own steps alone, the
    advantages' normalization included; an all-ones mask is the unmasked loss."""
    torch.manual_seed(0)
    agent, b, args = lot.Agent(4), _batch(n=16), lot.Args()
    mask = torch.ones(16)
    mask[[2, 3, 4, 11]] = 0.0
    kept = {k: v[mask.bool()] for k, v in b.items()}
    masked, masked_stats, _ = lot.ppo_loss(agent, b["obs"], b["actions"], b["old_logprobs"], b["advantages"],
                                           b["returns"], b["old_values"], args, mask)
    alone, alone_stats, _ = lot.ppo_loss(agent, kept["obs"], kept["actions"], kept["old_logprobs"],
                                         kept["advantages"], kept["returns"], kept["old_values"], args)
    params = list(agent.parameters())
    for g1, g2 in zip(torch.autograd.grad(masked, params), torch.autograd.grad(alone, params)):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)
    assert masked.item() == pytest.approx(alone.item(), rel=1e-5)
    for name in alone_stats:
        assert masked_stats[name].item() == pytest.approx(alone_stats[name].item(), rel=1e-5, abs=1e-7)
    ones, _, _ = lot.ppo_loss(agent, b["obs"], b["actions"], b["old_logprobs"], b["advantages"], b["returns"],
                              b["old_values"], args, torch.ones(16))
    plain, _, _ = lot.ppo_loss(agent, b["obs"], b["actions"], b["old_logprobs"], b["advantages"], b["returns"],
                               b["old_values"], args)
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)


def test_runs_saved_before_life_loss_restart_existed_resume_and_evaluate_as_they_were():
    """The option's default is the native env's own behaviour, so a checkpoint's config from before the option
    resumes (and evaluates) as it was trained."""
    old = cfg_lib.to_dict(lot.Args())
    del old["life_loss_restart"]
    assert cfg_lib.from_dict(lot.Args, old).life_loss_restart is False


def test_default_env_is_cleanrls_wrappers_and_older_runs_resume_on_the_native_env(tiny_args, monkeypatch, capsys):
    """Issue 18: a new run's env is CleanRL's wrappers by default and its saved config names it; a run saved before
    the change (its config names no env: it trained on the native env, then the default) resumes on the native env,
    unless --env-backend says otherwise."""
    built = []
    original = lot.make_env
    monkeypatch.setattr(lot, "make_env", lambda *a, **k: built.append(k["backend"]) or original(*a, **k))
    run_dir = lot.train(tiny_args(alpha=0.0, num_students=0, student_steps_ratio=0), max_updates=1)
    assert built == ["gymnasium"]
    checkpoint = load_checkpoint(run_dir, kind=lot.CHECKPOINT_KIND)
    assert checkpoint["config"]["env_backend"] == "gymnasium"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["env_backend"] == "gymnasium"

    checkpoint["config"]["env_backend"] = None  # as saved before issue 18
    save_checkpoint(run_dir / lot.CHECKPOINT_NAME, lot.CHECKPOINT_KIND,
                    {k: v for k, v in checkpoint.items() if k != "path"})
    assert main(["train", "--resume", str(run_dir), "--total-timesteps", "128"]) == 0
    assert built[-1] == "ale"
    assert load_checkpoint(run_dir, kind=lot.CHECKPOINT_KIND)["config"]["env_backend"] == "ale"


class _CleanRLAgent(torch.nn.Module):
    """CleanRL's ppo_atari.py network as it builds it: NCHW float frames divided by 255.0 in the forward."""

    def __init__(self, num_actions: int):
        super().__init__()
        conv = torch.nn.Conv2d
        self.network = torch.nn.Sequential(conv(4, 32, 8, stride=4), torch.nn.ReLU(), conv(32, 64, 4, stride=2),
                                           torch.nn.ReLU(), conv(64, 64, 3, stride=1), torch.nn.ReLU(),
                                           torch.nn.Flatten(), torch.nn.Linear(3136, 512), torch.nn.ReLU())
        self.actor, self.critic = torch.nn.Linear(512, num_actions), torch.nn.Linear(512, 1)

    def clipped_gradients(self, obs, actions, old_logprobs, advantages, returns, old_values, clip=0.1,
                          ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5):
        """One minibatch of CleanRL's update, its loss term by term, up to the clipped gradients."""
        hidden = self.network(obs.float() / 255.0)
        probs = Categorical(logits=self.actor(hidden))
        logratio = probs.log_prob(actions) - old_logprobs
        ratio = logratio.exp()
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        pg_loss = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)).mean()
        newvalue = self.critic(hidden).view(-1)
        v_clipped = old_values + torch.clamp(newvalue - old_values, -clip, clip)
        v_loss = 0.5 * torch.max((newvalue - returns) ** 2, (v_clipped - returns) ** 2).mean()
        loss = pg_loss - ent_coef * probs.entropy().mean() + v_loss * vf_coef
        self.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters(), max_grad_norm)
        return [p.grad for p in self.parameters()]


def _record_teacher_steps(monkeypatch) -> list[dict]:
    """Every teacher optimizer step of a run: its minibatch, the parameters before it and the clipped gradients."""
    steps: list[dict] = []
    original = lot.lot_ppo_loss

    def recording_loss(agent, students, *batch, **kwargs):
        steps.append({"params": {k: v.detach().clone() for k, v in agent.state_dict().items()},
                      "batch": [t.detach().clone() for t in batch[:6]]})
        return original(agent, students, *batch, **kwargs)

    def before_step(optimizer, args, kwargs):
        if "grads" not in steps[-1]:
            steps[-1]["grads"] = [p.grad.detach().clone() for p in optimizer.param_groups[0]["params"]]

    monkeypatch.setattr(lot, "lot_ppo_loss", recording_loss)
    handle = register_optimizer_step_pre_hook(before_step)
    return steps, handle


@pytest.mark.parametrize("channels_last", [False, True])
def test_cleanrl_preset_trains_with_cleanrls_gradients(tmp_path, monkeypatch, channels_last):
    """Issue 12: ``--preset cleanrl`` is CleanRL's ppo_atari.py. A real run of ours (CleanRL's environment,
    then every minibatch of an update) and CleanRL's update on the same minibatches and parameters give the
    same gradients: bit for bit in NCHW (the preset), to float rounding in channels-last (other conv kernels)."""
    tiny = dict(total_timesteps=64, num_envs=2, num_steps=32, num_minibatches=2, update_epochs=2,
                run_dir=str(tmp_path), channels_last=channels_last)
    args = cfg_lib.resolve(lot.Args, tiny, lot.PRESETS, "cleanrl")
    assert (args.env_backend, args.lr_schedule, args.alpha, args.num_students) == ("gymnasium", "linear", 0.0, 0)
    steps, handle = _record_teacher_steps(monkeypatch)
    try:
        lot.train(args)
    finally:
        handle.remove()
    assert len(steps) == 2 * 2  # epochs x minibatches
    cleanrl = _CleanRLAgent(4)
    for step in steps:
        cleanrl.load_state_dict(step["params"])
        obs, actions, old_logprobs, advantages, returns, old_values = step["batch"]
        expected = cleanrl.clipped_gradients(obs.contiguous(), actions, old_logprobs, advantages, returns,
                                             old_values)
        for got, want in zip(step["grads"], expected):
            if channels_last:
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
            else:
                assert torch.equal(got, want)
    # CleanRL's learning rate: (1 - (iteration - 1) / iterations) * 2.5e-4 at the start of every iteration.
    factor = lot.lr_factor(cfg_lib.resolve(lot.Args, {}, lot.PRESETS, "cleanrl"))
    iterations = 10_000_000 // 1024
    assert all(2.5e-4 * factor(i - 1) == (1.0 - (i - 1.0) / iterations) * 2.5e-4 for i in range(1, iterations + 1))


# The reference's settings (trainer/atari_games.py with run/run_atari_games_LoT.sh), option by option.
REFERENCE_RUN = dict(total_timesteps=20_000_000, num_envs=8, num_steps=128, num_minibatches=4, update_epochs=4,
                     clip_coef=0.1, clip_vloss=True, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, gamma=0.99,
                     gae_lambda=0.95, norm_adv=True, learning_rate=2.5e-4, adam_eps=1e-5, lr_schedule="cosine",
                     final_lr=2.5e-6, alpha=0.5, num_students=1, student_steps_ratio=5, obs_num=10, temperature=1.0,
                     detach=True, student_weight_decay=1e-4, student_max_grad_norm=0.5, student_on_ppo_batches=True,
                     student_arch="nature", student_lr=None, student_minibatches=4, cache_mode="reference",
                     env_backend="gymnasium", repeat_action_probability=None, seed=0, lot_start=0.0,
                     precision="fp32", channels_last=False, max_episode_frames=400_000, target_kl=None)


def test_ppo_preset_is_cleanrls_ppo_on_cleanrls_environment_in_channels_last():
    """Issue 18: ``--preset ppo`` trains on CleanRL's wrappers (on Breakout the native env learned half the
    return at 300k steps over 5 seeds, docs/learning_parity.md); it differs from ``--preset cleanrl`` only in the
    channels-last layout, and ``--env-backend ale`` on the command line still gives the native env."""
    ppo, cleanrl = (cfg_lib.resolve(lot.Args, {}, lot.PRESETS, name) for name in ("ppo", "cleanrl"))
    assert ppo.env_backend == "gymnasium"
    differing = {k for k in vars(ppo) if getattr(ppo, k) != getattr(cleanrl, k)}
    assert differing == {"channels_last"} and ppo.channels_last and not cleanrl.channels_last
    assert cfg_lib.resolve(lot.Args, {"env_backend": "ale"}, lot.PRESETS, "ppo").env_backend == "ale"


def test_reference_preset_is_the_reference_run(tmp_path):
    """Issue 12: ``--preset reference`` holds every setting of the reference's run, and a run of it shows the
    reference's behaviour: alpha 0 in the first update then 0.5, and a cache whose every entry is the latest
    rollout."""
    args = cfg_lib.resolve(lot.Args, {}, lot.PRESETS, "reference")
    assert {name: getattr(args, name) for name in REFERENCE_RUN} == REFERENCE_RUN
    paper = cfg_lib.resolve(lot.Args, {}, lot.PRESETS, "paper")
    differences = {name for name in REFERENCE_RUN if getattr(paper, name) != REFERENCE_RUN[name]}
    assert differences == {"cache_mode", "env_backend", "seed", "channels_last", "max_episode_frames"}
    tiny = dict(total_timesteps=64, num_envs=2, num_steps=16, num_minibatches=2, update_epochs=1,
                student_steps_ratio=1, run_dir=str(tmp_path), run_name="reference")
    run_dir = lot.train(cfg_lib.resolve(lot.Args, tiny, lot.PRESETS, "reference"))
    assert [row["lot/alpha"] for row in read_metrics(run_dir) if "lot/alpha" in row] == [0.0, 0.5]
    cache = load_checkpoint(run_dir)["cache"]
    assert (cache["mode"], cache["capacity"], cache["seen"]) == ("reference", 10, 2)


def test_gae_matches_naive_recursion():
    rng = np.random.default_rng(0)
    T, N, gamma, lam = 7, 3, 0.9, 0.8
    rewards, values = rng.normal(size=(T, N)), rng.normal(size=(T, N))
    dones = (rng.random((T, N)) < 0.3).astype(float)
    next_value, next_done = rng.normal(size=N), np.array([0.0, 1.0, 0.0])
    adv, ret = lot.compute_gae(*(torch.tensor(x) for x in (rewards, values, dones, next_value, next_done)),
                               gamma, lam)
    for n in range(N):  # per env: A_t = sum_k (gamma lam)^k delta_{t+k}, cut at episode ends
        for t in range(T):
            total, discount = 0.0, 1.0
            for k in range(t, T):
                nonterminal = 1 - (dones[k + 1, n] if k + 1 < T else next_done[n])
                v_next = values[k + 1, n] if k + 1 < T else next_value[n]
                total += discount * (rewards[k, n] + gamma * v_next * nonterminal - values[k, n])
                discount *= gamma * lam * nonterminal
            assert adv[t, n].item() == pytest.approx(total)
    torch.testing.assert_close(ret, adv + torch.tensor(values))


@pytest.mark.parametrize("num_students, weights", [(1, []), (2, [0.3, 0.7])])
def test_lot_minibatch_gradients(num_students, weights):
    """Teacher: grad(PPO + alpha * sum_i lambda_i kl(teacher, student_i)); students: grad of their own
    imitation kl(student_i, teacher) only."""
    torch.manual_seed(0)
    args = lot.Args(alpha=0.5, num_students=num_students, student_weights=weights, temperature=1.5)
    agent, b = lot.Agent(4), _batch()
    students = lot.make_students(args, 4, torch.device("cpu"), lot.lr_factor(args))
    loss, stats = lot.lot_ppo_loss(agent, students, b["obs"], b["actions"], b["old_logprobs"],
                                   b["advantages"], b["returns"], b["old_values"], args, alpha_now=args.alpha)
    loss.backward()

    ppo, teacher_logits = _cleanrl_loss_by_hand(agent, b)
    lambdas = weights or [1.0 / num_students] * num_students
    student_logits = [s(b["obs"]) for s in students.networks]
    teacher_total = ppo + args.alpha * sum(lam * kl(teacher_logits, s.detach(), 1.5)
                                           for lam, s in zip(lambdas, student_logits))
    for p, g in zip(agent.parameters(), torch.autograd.grad(teacher_total, list(agent.parameters()))):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    for net, s in zip(students.networks, student_logits):
        own = kl(s, teacher_logits.detach(), 1.5)
        for p, g in zip(net.parameters(), torch.autograd.grad(own, list(net.parameters()))):
            torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    assert stats["teacher_kl"].item() == pytest.approx(
        sum(lam * kl(teacher_logits, s, 1.5).item() for lam, s in zip(lambdas, student_logits)), rel=1e-5)


def test_undetached_lot_minibatch_lets_each_side_reach_the_other():
    """``--no-detach`` as the reference's ``--detach 0``: the penalty reaches the students and the students'
    imitation loss reaches the teacher (issue 12: ours detached the imitation loss always)."""
    torch.manual_seed(0)
    args = lot.Args(alpha=0.5, num_students=2, student_weights=[0.3, 0.7], temperature=1.5, detach=False,
                    student_arch="small")
    agent, b = lot.Agent(4), _batch()
    students = lot.make_students(args, 4, torch.device("cpu"), lot.lr_factor(args))
    loss, _ = lot.lot_ppo_loss(agent, students, b["obs"], b["actions"], b["old_logprobs"], b["advantages"],
                               b["returns"], b["old_values"], args, alpha_now=args.alpha)
    loss.backward()

    ppo, teacher_logits = _cleanrl_loss_by_hand(agent, b)
    student_logits = [s(b["obs"]) for s in students.networks]
    total = ppo + sum(0.5 * lam * kl(teacher_logits, s, 1.5) + kl(s, teacher_logits, 1.5)
                      for lam, s in zip([0.3, 0.7], student_logits))
    networks = [agent, *students.networks]
    params = [p for net in networks for p in net.parameters()]
    for p, g in zip(params, torch.autograd.grad(total, params)):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)


def test_learning_rate_schedules():
    cosine = lot.lr_factor(lot.Args(total_timesteps=1024 * 10))
    assert cosine(0) == pytest.approx(1.0) and cosine(10) == pytest.approx(2.5e-6 / 2.5e-4)
    assert cosine(5) == pytest.approx((1 + 2.5e-6 / 2.5e-4) / 2)
    linear = lot.lr_factor(lot.Args(total_timesteps=1024 * 10, lr_schedule="linear"))
    assert linear(0) == 1.0 and linear(5) == pytest.approx(0.5) and linear(10) == 0.0


def test_student_phase_uses_targets_once_and_imitates():
    torch.manual_seed(0)
    args = lot.Args(num_envs=2, num_steps=4, num_students=1, student_steps_ratio=3, student_minibatches=2, obs_num=2)
    agent = lot.Agent(4)
    students = lot.make_students(args, 4, torch.device("cpu"), lot.lr_factor(args))
    cache = lot.ObservationCache(2)
    cache.append(_batch(8)["obs"])
    cache.append(_batch(8, seed=1)["obs"])
    calls = []
    original = agent.policy_logits
    agent.policy_logits = lambda states: calls.append(states.shape[0]) or original(states)
    losses = lot.student_phase(agent, students, cache, args, lot.autocast_for(torch.device("cpu"), "fp32"))
    assert calls == [8, 8]  # the teacher ran once per cached rollout, not per minibatch or pass
    assert len(losses) == 3 * 2 * 2  # N passes x cached rollouts x student minibatches


def _read_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


@pytest.mark.filterwarnings("ignore:--precision bf16:RuntimeWarning")  # bf16 on purpose; warned on AVX2 CPUs
def test_train_command_end_to_end(tiny_args, tmp_path, capsys):
    code = main(["train", "--total-timesteps", "512", "--num-envs", "2", "--num-steps", "64",
                 "--num-minibatches", "2", "--update-epochs", "1", "--obs-num", "2", "--student-steps-ratio", "1",
                 "--student-minibatches", "2", "--run-dir", str(tmp_path), "--run-name", "e2e", "--save-every", "2",
                 "--precision", "bf16"])
    assert code == 0
    run_dir = tmp_path / "e2e"
    tags = _read_tags(run_dir)
    assert {"charts/SPS", "charts/learning_rate", "losses/policy_loss", "losses/value_loss", "losses/entropy",
            "losses/approx_kl", "losses/clipfrac", "losses/explained_variance", "lot/teacher_kl",
            "lot/student_kl", "lot/alpha"} <= tags
    ckpt = load_checkpoint(run_dir, kind=lot.CHECKPOINT_KIND)
    assert ckpt["update"] == 4 and ckpt["global_step"] == 512
    agent = lot.Agent(ckpt["num_actions"])
    agent.load_state_dict(ckpt["agent"])
    assert ckpt["config"]["precision"] == "bf16" and (run_dir / "config.yaml").is_file()
    assert len(ckpt["cache"]["entries"]) == 2 and ckpt["cache"]["entries"][0].shape == (128, 4, 84, 84)


def test_precision_auto_is_printed_and_logged(tiny_args, monkeypatch, capsys):
    """``--precision auto`` runs what lot_rl.runtime.resolve_precision chooses here; the choice is printed, heads
    config.yaml (as a comment: the file still reads back as the run's options, ``auto`` included) and is in the
    hyperparameters logged to TensorBoard and W&B."""
    chosen = []
    monkeypatch.setattr(lot, "resolve_precision", lambda precision, device: (chosen.append(precision) or
                                                                            ("bf16", "auto: mocked CPU")))
    logged = {}
    real_logger = lot.RunLogger
    monkeypatch.setattr(lot, "RunLogger", lambda run_dir, hparams, **kw: logged.update(hparams) or
                        real_logger(run_dir, hparams, **kw))
    autocasts = []
    real_autocast_for = lot.autocast_for
    monkeypatch.setattr(lot, "autocast_for", lambda device, p: autocasts.append(p) or real_autocast_for(device, p))
    run_dir = lot.train(tiny_args(alpha=0.0, num_students=0, total_timesteps=64, precision="auto"))
    assert chosen == ["auto"] and autocasts == ["bf16"]
    assert "precision: bf16 (auto: mocked CPU)" in capsys.readouterr().out
    text = (run_dir / "config.yaml").read_text()
    assert text.startswith("# precision: bf16 (auto: mocked CPU)\n")
    assert yaml.safe_load(text)["precision"] == "auto"
    assert logged["precision"] == "auto" and logged["precision_in_use"] == "bf16"


def test_teacher_only_run_has_no_student_cost(tiny_args, monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("no student work in teacher-only PPO")
    monkeypatch.setattr(lot, "StudentPolicy", forbidden)
    monkeypatch.setattr(lot, "student_phase", forbidden)
    run_dir = lot.train(tiny_args(alpha=0.0, num_students=0, total_timesteps=128))
    ckpt = load_checkpoint(run_dir)
    assert ckpt["students"]["networks"] == [] and ckpt["cache"]["entries"] == []


def _params(run_dir):
    ckpt = load_checkpoint(run_dir)
    return ckpt, list(ckpt["agent"].values()) + [t for sd in ckpt["students"]["networks"] for t in sd.values()]


def _record_initial_parameters(monkeypatch) -> list[list[torch.Tensor]]:
    """Make every Agent and StudentPolicy built from now on record a copy of its initial parameters."""
    initial: list[list[torch.Tensor]] = []
    for name in ("Agent", "StudentPolicy"):
        cls = getattr(lot, name)

        class Recording(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                initial.append([t.detach().clone() for t in self.state_dict().values()])

        monkeypatch.setattr(lot, name, Recording)
    return initial


def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_args, monkeypatch):
    initial = _record_initial_parameters(monkeypatch)
    straight = lot.train(tiny_args(env_backend="gymnasium", run_name="straight", total_timesteps=256))
    teacher_before, student_before = initial[:2]
    args = tiny_args(env_backend="gymnasium", run_name="split", total_timesteps=256, save_every=100)
    split = lot.train(args, max_updates=2)  # stops after update 2 with a checkpoint, as Ctrl-C does
    assert load_checkpoint(split)["update"] == 2
    lot.train(args, resume=split)
    ckpt_a, a = _params(straight)
    ckpt_b, b = _params(split)
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == 256
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # Training changed every weight tensor of the teacher and the student (issue 12, bug 2: this compared
    # with an agent of another seed, so it held even if training had changed nothing).
    trained_teacher, trained_student = list(ckpt_a["agent"].values()), list(ckpt_a["students"]["networks"][0].values())
    assert len(trained_teacher) == len(teacher_before) and len(trained_student) == len(student_before)
    assert all(not torch.equal(x, y) for x, y in zip(trained_teacher, teacher_before))
    assert all(not torch.equal(x, y) for x, y in zip(trained_student, student_before))


def test_resume_applies_the_options_given_with_it(tiny_args, tmp_path):
    """Issue 12, bug 3: options typed with --resume win over the checkpoint, including those the saved
    cache, optimizer and scheduler states used to overwrite silently."""
    run_dir = lot.train(tiny_args(total_timesteps=128, num_students=2, student_arch="small", obs_num=2,
                                  lr_schedule="constant", save_every=100), max_updates=1)
    assert load_checkpoint(run_dir)["cache"]["capacity"] == 2
    (tmp_path / "more.yaml").write_text("temperature: 2.0\n")
    assert main(["train", "--resume", str(run_dir), "--config", str(tmp_path / "more.yaml"), "--obs-num", "1",
                 "--cache-mode", "reference", "--learning-rate", "1e-3", "--adam-eps", "1e-6",
                 "--student-lr", "2e-3", "--student-weight-decay", "0", "--student-weights", "0.25", "0.75"]) == 0
    ckpt = load_checkpoint(run_dir)
    assert ckpt["update"] == 2 and ckpt["config"]["temperature"] == 2.0
    assert (ckpt["cache"]["capacity"], ckpt["cache"]["mode"], len(ckpt["cache"]["entries"])) == (1, "reference", 1)
    teacher_group = ckpt["optimizer"]["param_groups"][0]
    assert (teacher_group["lr"], teacher_group["eps"]) == (1e-3, 1e-6)
    for state in ckpt["students"]["optimizers"]:
        group = state["param_groups"][0]
        assert (group["lr"], group["eps"], group["weight_decay"]) == (2e-3, 1e-6, 0.0)
    assert ckpt["students"]["weights"] == [0.25, 0.75]


def test_resume_refuses_the_options_it_cannot_apply(tiny_args, capsys):
    run_dir = lot.train(tiny_args(total_timesteps=64))
    original = (run_dir / "checkpoint.pt").read_bytes()
    for argv, message in ((["--preset", "ppo"], "--preset cannot be combined with --resume"),
                          (["--seed", "7"], "--seed 7 differs from the resumed run's 1"),
                          (["--run-name", "other"], "--run-name 'other' differs from the resumed run's 'run'"),
                          (["--student-arch", "small"], "--student-arch 'small' differs from the resumed run's "
                                                        "'nature'")):
        assert main(["train", "--resume", str(run_dir), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, argv
        assert (run_dir / "checkpoint.pt").read_bytes() == original


@pytest.mark.parametrize("argv, message", [
    (["--env-id", "Breakuot-v4"], "unknown Atari env id 'Breakuot-v4'; did you mean BreakoutNoFrameskip-v4"),
    (["--alpha", "-1"], "--alpha must be >= 0"),
    (["--num-envs", "0"], "--num-envs must be >= 1"),
    (["--num-steps", "-5"], "--num-steps must be >= 1"),
    (["--obs-num", "0"], "--obs-num must be >= 1"),
    (["--num-students", "-1"], "--num-students must be >= 0"),
    (["--num-minibatches", "3"], "--num-minibatches 3 does not divide the batch of 1024"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--num-students", "0"], "--alpha 0.5 needs at least one student"),
    (["--student-weights", "1", "2"], "--student-weights has 2 values for 1 students"),
    (["--lot-start", "2"], "--lot-start is a fraction"),
    # issue 12, bug 4: 0 fell back to --learning-rate
    (["--student-lr", "0"], "--student-lr must be > 0 (leave it out to follow --learning-rate), got 0.0"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
])
def test_bad_options_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing was created


def test_unknown_preset_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--preset", "fast"])
    assert exc.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err


def test_bad_checkpoints_exit_2_and_stay_untouched(tiny_args, tmp_path, capsys):
    run_dir = lot.train(tiny_args(total_timesteps=64, num_students=0, alpha=0.0))
    original = (run_dir / "checkpoint.pt").read_bytes()
    # a run folder that already holds a checkpoint is never overwritten by a new run
    assert main(["train", "--run-dir", str(run_dir.parent), "--run-name", run_dir.name]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    # another game / another action space
    assert main(["train", "--resume", str(run_dir), "--env-id", "PongNoFrameskip-v4"]) == 2
    assert "is from BreakoutNoFrameskip-v4, not PongNoFrameskip-v4" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--full-action-space"]) == 2
    assert "has 4 actions, this env has 18" in capsys.readouterr().err
    assert (run_dir / "checkpoint.pt").read_bytes() == original
    # truncated checkpoint
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(original[: len(original) // 2])
    assert main(["train", "--resume", str(broken)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert (broken / "checkpoint.pt").read_bytes() == original[: len(original) // 2]
    # a checkpoint of another kind
    save_checkpoint(broken / "other.pt", "cv", {"config": {}})
    assert main(["train", "--resume", str(broken / "other.pt")]) == 2
    assert "is a 'cv' checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# MinAtar: the network follows the observation shape; the presets; a short run


def _orthogonal_rows(weight, std):
    flat = weight.reshape(weight.shape[0], -1)
    return torch.allclose(flat @ flat.T, std ** 2 * torch.eye(flat.shape[0]), atol=1e-5)


def test_network_follows_the_observation_shape():
    atari = lot.Agent(4)
    assert atari.network[0].kernel_size == (8, 8) and atari.actor.in_features == 512
    frames = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(atari.hidden(frames), atari.network(frames.float() / 255.0))  # scaled

    torch.manual_seed(0)
    agent = lot.Agent(5, (7, 10, 10))  # Young & Tian's network for 10x10 MinAtar grids
    conv, linear = agent.network[0], agent.network[3]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (7, 16, (3, 3), (1, 1))
    assert (linear.in_features, linear.out_features) == (16 * 8 * 8, 128)
    assert (agent.actor.in_features, agent.actor.out_features, agent.critic.out_features) == (128, 5, 1)
    # CleanRL's orthogonal initialisation: sqrt(2) in the trunk, 0.01 for the policy, 1 for the value
    assert _orthogonal_rows(linear.weight, 2 ** 0.5) and _orthogonal_rows(agent.actor.weight, 0.01)
    assert torch.allclose(agent.critic.weight.norm(), torch.tensor(1.0)) and not linear.bias.any()
    grids = torch.randint(0, 2, (6, 7, 10, 10), dtype=torch.uint8)
    torch.testing.assert_close(agent.hidden(grids), agent.network(grids.float()))  # 0/1 inputs, no /255
    action, logprob, entropy, value, logits = agent.get_action_and_value(grids)
    assert logits.shape == (6, 5) and value.shape == (6, 1) and action.shape == logprob.shape == (6,)

    student = lot.StudentPolicy(5, "nature", (7, 10, 10))
    assert student.network[0].out_channels == 16 and student(grids).shape == (6, 5)
    with pytest.raises(LoTUserError, match="--student-arch small is for Atari frames"):
        lot.StudentPolicy(5, "small", (7, 10, 10))
    with pytest.raises(LoTUserError, match=r"no network for observations of shape \(3, 64, 64\)"):
        lot.Agent(5, (3, 64, 64))


def test_minatar_presets_are_one_ppo_with_and_without_lot():
    ppo, lot_preset = lot.PRESETS["minatar-ppo"], lot.PRESETS["minatar"]
    differing = {k for k in ppo.keys() | lot_preset.keys() if ppo.get(k) != lot_preset.get(k)}
    assert differing <= {"alpha", "num_students", "student_steps_ratio", "obs_num", "temperature",
                         "student_weight_decay"}
    assert (ppo["alpha"], ppo["num_students"]) == (0.0, 0)
    assert {k: lot_preset[k] for k in ("alpha", "student_steps_ratio", "obs_num", "temperature",
                                       "student_weight_decay")} == dict(alpha=0.5, student_steps_ratio=5, obs_num=10,
                                                                        temperature=1.0, student_weight_decay=1e-4)
    args = cfg_lib.resolve(lot.Args, {}, lot.PRESETS, "minatar-ppo")
    # PureJaxRL's MinAtar PPO: 64 envs x 128 steps, 4 epochs x 8 minibatches, clip 0.2, lr 5e-3 annealed linearly
    assert (args.num_envs, args.num_steps, args.update_epochs, args.minibatch_size) == (64, 128, 4, 1024)
    assert args.learning_rate == 5e-3 and args.lr_schedule == "linear" and args.clip_coef == 0.2
    assert not args.clip_rewards and args.gamma == 0.99 and args.ent_coef == 0.01
    lot.validate_args(args)


def test_minatar_train_eval_video_end_to_end(tmp_path, capsys):
    """A short MinAtar LoT run, then `lot-rl eval --video` on it: networks, uint8 cache, checkpoint, videos."""
    threads = torch.get_num_threads()
    args = cfg_lib.resolve(lot.Args, dict(total_timesteps=256, num_envs=4, num_steps=32, num_minibatches=2,
                                          update_epochs=1, obs_num=2, student_steps_ratio=1, save_every=1,
                                          run_dir=str(tmp_path), run_name="minatar"), lot.PRESETS, "minatar")
    run_dir = lot.train(args)
    assert torch.get_num_threads() == threads  # --threads 1 of the preset is undone...
    assert (torch.tensor([1e-39]) * 1.0).item() > 0  # ...and so is --flush-denormals
    ckpt = load_checkpoint(run_dir, kind=lot.CHECKPOINT_KIND)
    assert ckpt["observation_shape"] == [4, 10, 10] and ckpt["num_actions"] == 3 and ckpt["global_step"] == 256
    assert [(e.shape, e.dtype) for e in ckpt["cache"]["entries"]] == [((128, 4, 10, 10), torch.uint8)] * 2
    agent = lot.Agent(3, (4, 10, 10))
    agent.load_state_dict(ckpt["agent"])
    returns = [row["charts/episodic_return"] for row in map(json.loads, (run_dir / "metrics.jsonl").open())
               if "charts/episodic_return" in row]
    assert returns and all(r == int(r) >= 0 for r in returns)  # Breakout: one point per brick

    assert main(["eval", str(run_dir), "--policy", "all", "--episodes", "3", "--num-envs", "2", "--json",
                 str(tmp_path / "eval.json"), "--video", str(tmp_path / "videos"), "--video-episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "MinAtar-Breakout (MinAtar/Breakout-v1)" in out and "sticky 0.1" in out and "lengths in agent steps" in out
    report = json.loads((tmp_path / "eval.json").read_text())
    teacher = report["results"][0]
    assert [r["policy"] for r in report["results"]] == ["teacher", "student:0"] and len(teacher["episodes"]) == 3
    for path, episode in zip(teacher["videos"], teacher["episodes"]):  # one frame per step, 320x320 pixels
        info = probe(path)
        assert (info.codec, info.width, info.height, info.frames) == ("h264", 320, 320, episode["length"])
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == 4  # 2 per policy


def test_minatar_run_resumes_and_stays_on_its_game(tmp_path, capsys):
    args = cfg_lib.resolve(lot.Args, dict(total_timesteps=256, num_envs=4, num_steps=32, run_dir=str(tmp_path),
                                          run_name="minatar"), lot.PRESETS, "minatar-ppo")
    run_dir = lot.train(args, max_updates=1)  # stops with a checkpoint, as Ctrl-C does
    assert load_checkpoint(run_dir)["update"] == 1
    assert main(["train", "--resume", str(run_dir)]) == 0  # new games, everything else restored
    ckpt = load_checkpoint(run_dir)
    assert (ckpt["update"], ckpt["global_step"], ckpt["config"]["env_id"]) == (2, 256, "MinAtar/Breakout-v1")
    assert main(["train", "--resume", str(run_dir), "--env-id", "BreakoutNoFrameskip-v4"]) == 2
    assert "is from MinAtar/Breakout-v1, not BreakoutNoFrameskip-v4" in capsys.readouterr().err


def test_training_leaves_the_forced_steps_of_each_restarted_life_out_of_the_loss(tmp_path, monkeypatch):
    """Issue 18, end to end: in a real native-env rollout on Breakout, every life loss is followed by three
    forced steps of that env, and exactly those reach the PPO loss with weight 0."""
    forced_seen, masks = [], []
    real_lot_ppo_loss = lot.lot_ppo_loss

    def spy(*a, mask=None, **kw):
        masks.append(None if mask is None else mask.clone())
        return real_lot_ppo_loss(*a, mask=mask, **kw)

    monkeypatch.setattr(lot, "lot_ppo_loss", spy)
    real_make_env = lot.make_env

    def recording_make_env(*a, **kw):
        env = real_make_env(*a, **kw)
        step = env.step

        def recorded(actions):
            out = step(actions)
            forced_seen.append((out[2].copy(), out[4]["forced"].copy()))
            return out
        env.step = recorded
        return env

    monkeypatch.setattr(lot, "make_env", recording_make_env)
    tiny = dict(total_timesteps=256, num_envs=2, num_steps=128, num_minibatches=1, update_epochs=1,
                run_dir=str(tmp_path), threads=1, life_loss_restart=True, env_backend="ale")
    lot.train(cfg_lib.resolve(lot.Args, tiny, lot.PRESETS, "ppo"))
    terminated = np.stack([t for t, _ in forced_seen])  # (steps, envs)
    forced = np.stack([f for _, f in forced_seen])
    assert forced.sum() >= 3
    for env in range(2):  # each forced run starts right after a termination that was a life loss
        starts = np.flatnonzero(forced[1:, env] & ~forced[:-1, env]) + 1
        assert all(terminated[s - 1, env] for s in starts)
    assert len(masks) == 1 and masks[0] is not None  # one minibatch: the whole rollout, shuffled
    assert masks[0].numel() == forced.size and int((masks[0] == 0).sum()) == int(forced.sum()) > 0


def test_life_loss_continue_trains_on_cleanrls_wrappers_with_the_native_envs_life_losses(tmp_path, monkeypatch, capsys):
    """Issue 18's arm end to end: the run's envs are CleanRL's wrappers with LifeLossContinue (no EpisodicLifeEnv),
    every step is the agent's (no mask), the saved config names the option; the native env refuses it."""
    from lot_rl.envs.atari import LifeLossContinue, _wrappers
    built, masks = [], []
    real_make_env, real_lot_ppo_loss = lot.make_env, lot.lot_ppo_loss
    monkeypatch.setattr(lot, "make_env", lambda *a, **kw: built.append(real_make_env(*a, **kw)) or built[-1])
    monkeypatch.setattr(lot, "lot_ppo_loss", lambda *a, mask=None, **kw: masks.append(mask) or real_lot_ppo_loss(
        *a, mask=mask, **kw))
    tiny = dict(total_timesteps=256, num_envs=2, num_steps=128, num_minibatches=1, update_epochs=1,
                run_dir=str(tmp_path), threads=1, life_loss_continue=True, env_backend="gymnasium")
    run_dir = lot.train(cfg_lib.resolve(lot.Args, tiny, lot.PRESETS, "ppo"))
    names = [type(w).__name__ for w in _wrappers(built[0].env.envs[0])]
    assert isinstance(built[0].env.envs[0], LifeLossContinue) and "EpisodicLifeEnv" not in names
    assert "FireResetEnv" in names  # FIRE at a game's start, as the native env presses it
    assert masks == [None]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["life_loss_continue"] is True
    assert main(["train", "--preset", "ppo", "--env-backend", "ale", "--life-loss-continue",
                 "--run-dir", str(tmp_path / "bad")]) == 2
    assert "use --env-backend gymnasium" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_native_game_start_trains_and_evaluates_on_the_game_start_it_learnt(tmp_path, monkeypatch):
    """Issue 18's --native-game-start end to end: the run's envs start games as the native env does and restart
    lives as CleanRL's wrappers do; the saved config names the option and lot-rl eval plays with it."""
    from lot_rl.envs.atari import GameStartFrameStack, LifeRestartFire, NativeGameStart, _wrappers
    from lot_rl.evaluation import EvalSettings, load_train_checkpoint, resolve_settings
    built = []
    real_make_env = lot.make_env
    monkeypatch.setattr(lot, "make_env", lambda *a, **kw: built.append(real_make_env(*a, **kw)) or built[-1])
    tiny = dict(total_timesteps=256, num_envs=2, num_steps=128, num_minibatches=1, update_epochs=1,
                run_dir=str(tmp_path), threads=1, native_game_start=True, env_backend="gymnasium")
    run_dir = lot.train(cfg_lib.resolve(lot.Args, tiny, lot.PRESETS, "ppo"))
    kinds = {type(w) for w in _wrappers(built[0].env.envs[0])}
    assert {GameStartFrameStack, LifeRestartFire, NativeGameStart} <= kinds
    assert not {"NoopResetEnv", "FireResetEnv"} & {kind.__name__ for kind in kinds}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["native_game_start"] is True
    resolved = resolve_settings(load_train_checkpoint(run_dir), EvalSettings(episodes=1))
    assert resolved["native_game_start"] is True and resolved["life_loss_restart"] is True


def test_cleanrl_game_start_trains_on_cleanrls_games_on_the_native_env(tmp_path, monkeypatch):
    """Issue 18's fix end to end: on the native env with --cleanrl-game-start and --life-loss-restart, each env's
    first two steps of a game are forced (FIRE, RIGHT) and left out of the loss, the saved config names the
    option and lot-rl eval plays with it; the wrappers refuse it (they start games that way already)."""
    from lot_rl.envs.atari import CleanRLRestarts
    from lot_rl.evaluation import EvalSettings, load_train_checkpoint, resolve_settings
    built, masks = [], []
    real_make_env, real_lot_ppo_loss = lot.make_env, lot.lot_ppo_loss
    monkeypatch.setattr(lot, "make_env", lambda *a, **kw: built.append(real_make_env(*a, **kw)) or built[-1])
    monkeypatch.setattr(lot, "lot_ppo_loss", lambda *a, mask=None, **kw: masks.append(mask) or real_lot_ppo_loss(
        *a, mask=mask, **kw))
    tiny = dict(total_timesteps=256, num_envs=2, num_steps=128, num_minibatches=1, update_epochs=1,
                run_dir=str(tmp_path), threads=1, life_loss_restart=True, cleanrl_game_start=True,
                env_backend="ale")
    run_dir = lot.train(cfg_lib.resolve(lot.Args, tiny, lot.PRESETS, "ppo"))
    assert isinstance(built[0], CleanRLRestarts) and built[0]._game_plan == [1, 2]
    assert len(masks) == 1 and masks[0] is not None and int((masks[0] == 0).sum()) >= 2 * 2  # 2 per env's game
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["cleanrl_game_start"] is True
    resolved = resolve_settings(load_train_checkpoint(run_dir), EvalSettings(episodes=1))
    assert resolved["cleanrl_game_start"] is True and resolved["life_loss_restart"] is True
    with pytest.raises(LoTUserError, match="--cleanrl-game-start .* use --env-backend ale"):
        lot.train(cfg_lib.resolve(lot.Args, dict(tiny, env_backend="gymnasium", life_loss_restart=False,
                                                 run_dir=str(tmp_path / "bad")), lot.PRESETS, "ppo"))


def test_frames_scaled_under_bf16_autocast_are_what_autocast_made_of_fp32_frames():
    """scale_frames goes straight to bf16 under autocast: for every uint8 value, the bf16 that autocast's cast of
    the fp32 quotient gives; outside autocast, x / 255.0 in fp32."""
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(lot.scale_frames(x), x.float() / 255.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scaled = lot.scale_frames(x)
    assert scaled.dtype == torch.bfloat16 and torch.equal(scaled, (x.float() / 255.0).to(torch.bfloat16))


@pytest.mark.filterwarnings("ignore:--precision bf16:RuntimeWarning")  # bf16 on purpose; warned on AVX2 CPUs
def test_bf16_update_is_within_tolerance_of_fp32(device):
    """One LoT update's pieces (a PPO minibatch with the penalty and the students' imitation, then a student-phase
    step) from the same networks in fp32 and under bf16 autocast: losses, gradients and the parameters after the
    fused Adam steps agree to bf16's precision."""
    runs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        args = lot.Args(alpha=0.5, num_students=2, precision=precision)
        agent, b = lot.Agent(4).to(device, memory_format=torch.channels_last), _batch(n=64)
        b = {k: v.to(device) for k, v in b.items()}
        obs = b["obs"].contiguous(memory_format=torch.channels_last)
        students = lot.make_students(args, 4, device, lot.lr_factor(args))
        before = [p.detach().clone() for p in agent.parameters()]
        optimizer = lot.adam(agent.parameters(), lr=args.learning_rate, eps=args.adam_eps)
        autocast = lot.autocast_for(device, precision)
        loss, stats = lot.lot_ppo_loss(agent, students, obs, b["actions"], b["old_logprobs"], b["advantages"],
                                       b["returns"], b["old_values"], args, alpha_now=args.alpha, autocast=autocast)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in agent.parameters()])
        student_grads = torch.cat([p.grad.flatten() for p in students.networks.parameters()])
        torch.nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
        optimizer.step()
        students.step()
        with torch.no_grad():
            targets = torch.randn(64, 4, device=device) * 2
        imitation = students.imitate(obs, targets, autocast=autocast)
        steps = torch.cat([(p.detach() - q).flatten() for p, q in zip(agent.parameters(), before)])
        runs[precision] = dict(loss=float(loss.detach()), teacher_kl=float(stats["teacher_kl"]), imitation=imitation,
                               grads=grads, student_grads=student_grads, steps=steps,
                               students=torch.cat([p.detach().flatten() for p in students.networks.parameters()]))
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=2e-2)
    assert bf16["imitation"] == pytest.approx(fp32["imitation"], rel=2e-2)
    cosine = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    assert cosine(bf16["grads"], fp32["grads"]) > 0.99
    assert cosine(bf16["student_grads"], fp32["student_grads"]) > 0.99
    assert cosine(bf16["steps"], fp32["steps"]) > 0.9  # Adam's first step is nearly sign(gradient) * lr
    torch.testing.assert_close(bf16["students"], fp32["students"], rtol=0, atol=3 * 2.5e-4)  # <= 2 steps of lr


def test_lot_run_with_batched_students_on_each_device(tiny_args, device):
    """A short LoT run with two batched students on the device (CUDA: frames through pinned memory, bf16): it
    trains, checkpoints one state dict per student, and resumes with the students one after another."""
    precision = "bf16" if device.type == "cuda" else "fp32"
    args = tiny_args(device=str(device), num_students=2, batch_students="on", precision=precision,
                     student_arch="small", total_timesteps=192)
    run_dir = lot.train(args, max_updates=2)
    ckpt = load_checkpoint(run_dir, kind=lot.CHECKPOINT_KIND)
    assert ckpt["update"] == 2 and len(ckpt["students"]["networks"]) == 2
    first, second = (sd["actor.weight"] for sd in ckpt["students"]["networks"])
    assert first.device.type == "cpu" or first.device.type == device.type
    assert not torch.equal(first, second)
    resumed = lot.train(tiny_args(**{**vars(args), "batch_students": "off"}), resume=run_dir)
    assert load_checkpoint(resumed, kind=lot.CHECKPOINT_KIND)["update"] == 3


def _fixed_policy(monkeypatch):
    """The teacher's actions follow from the frames alone (not from its weights or torch's generator): runs whose
    batches are cut differently then play the very same games."""
    original = lot.Agent.get_action_and_value

    def act(self, x, action=None):
        if action is None:  # FIRE when nothing moves (a ball to launch), else what the frames' sum says
            frames = x.reshape(len(x), 4, -1).long()
            still = (frames[:, 0] == frames[:, -1]).all(1)
            action = torch.where(still, 1, frames.sum((1, 2)) % 4)
        return original(self, x, action)

    monkeypatch.setattr(lot.Agent, "get_action_and_value", act)


def _gae_inputs(monkeypatch) -> list[dict]:
    seen = []
    original = lot.compute_gae

    def recording(rewards, values, dones, next_value, next_done, gamma, gae_lambda):
        seen.append({name: t.clone() for name, t in dict(rewards=rewards, values=values, dones=dones,
                                                          next_value=next_value, next_done=next_done).items()})
        return original(rewards, values, dones, next_value, next_done, gamma, gae_lambda)

    monkeypatch.setattr(lot, "compute_gae", recording)
    return seen


def test_env_groups_give_the_same_data_and_episode_statistics(tiny_args, monkeypatch):
    """--env-groups 2 on a fixed policy: the games, their logged returns and lengths, and every input of GAE are
    those of the one-group rollout (values to float tolerance: the network's batch is cut in two)."""
    _fixed_policy(monkeypatch)
    gae = _gae_inputs(monkeypatch)
    settings = dict(num_envs=4, num_steps=64, total_timesteps=4 * 64 * 4, alpha=0.0, num_students=0, save_every=100,
                    threads=1, update_epochs=1, env_backend="ale")
    runs = [lot.train(tiny_args(run_name=f"groups{groups}", env_groups=groups, **settings)) for groups in (1, 2)]
    games = [[(r["step"], r["charts/episodic_return"], r["charts/episodic_length"])
              for r in read_metrics(run) if "charts/episodic_return" in r] for run in runs]
    assert len(games[0]) >= 2 and games[0] == games[1]
    one, two = gae[:4], gae[4:]
    assert len(two) == 4
    for a, b in zip(one, two):
        assert a["rewards"].shape == b["rewards"].shape == (64, 4)
        for name in ("rewards", "dones", "next_done"):
            assert torch.equal(a[name], b[name]), name
        assert bool(a["dones"].any())  # lives were lost inside the rollouts
        for name in ("values", "next_value"):
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_overlapped_students_train_as_the_sequential_order(tiny_args, monkeypatch):
    """--overlap-students: the student phase runs in a worker thread beside the next rollout, and the run ends
    with the parameters, optimizer states, cache and logged student losses of the sequential order, bit for bit."""
    import threading

    threads = []
    original = lot.student_phase

    def recording(*a, **k):
        threads.append(threading.current_thread() is threading.main_thread())
        return original(*a, **k)

    monkeypatch.setattr(lot, "student_phase", recording)
    settings = dict(total_timesteps=4 * 64, num_students=2, student_steps_ratio=2, threads=1, save_every=3)
    runs = [lot.train(tiny_args(run_name=f"overlap{flag}", overlap_students=flag, **settings)) for flag in (False, True)]
    assert threads == [True] * 4 + [False] * 4
    (ckpt_a, a), (ckpt_b, b) = _params(runs[0]), _params(runs[1])
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    for x, y in zip(ckpt_a["students"]["optimizers"], ckpt_b["students"]["optimizers"]):
        assert all(torch.equal(s["exp_avg"], t["exp_avg"]) for s, t in zip(x["state"].values(), y["state"].values()))
    assert all(torch.equal(x, y) for x, y in zip(ckpt_a["cache"]["entries"], ckpt_b["cache"]["entries"]))
    assert torch.equal(ckpt_a["student_rng"], ckpt_b["student_rng"])
    kls = [{r["step"]: r["lot/student_kl"] for r in read_metrics(run) if "lot/student_kl" in r} for run in runs]
    assert len(kls[0]) == 4 and kls[0] == kls[1]


@pytest.mark.parametrize("make, shape", [(lot.nature_cnn, (4, 84, 84)), (lot.small_cnn, (4, 84, 84)),
                                         (lot.minatar_network, (4, 10, 10))])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_trunks_flatten_before_the_last_relu_for_layouts_alone(make, shape, precision, load_script):
    """Issue 15: ReLU after Flatten is CleanRL's trunk (the benchmarks' "before" form) to the bit (parameter names,
    outputs, gradients), and on channels-last activations no ReLU backward meets a gradient of another memory
    layout than its output (the strided slow path of PyTorch's element-wise kernels)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    def layout(t):
        return "nhwc" if t.dim() == 4 and not t.is_contiguous() else "plain"

    class ReluBackwards(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.layouts = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.threshold_backward.default:
                self.layouts.append((layout(args[0]), layout(args[1])))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    trunk = make(shape[0]).to(memory_format=torch.channels_last)
    reference = load_script("benchmark_throughput").relu_before_flatten(trunk)
    assert [n for n, _ in trunk.named_parameters()] == [n for n, _ in reference.named_parameters()]
    x = torch.rand(8, *shape).contiguous(memory_format=torch.channels_last)
    grads, outs, spy = [], [], ReluBackwards()
    for net in (trunk, reference):
        net.zero_grad()
        with lot.autocast_for(torch.device("cpu"), precision)():
            out = net(x)
        if net is trunk:
            with spy:
                out.float().square().sum().backward()
        else:
            out.float().square().sum().backward()
        outs.append(out)
        grads.append([p.grad.clone() for p in net.parameters()])
    assert torch.equal(outs[0], outs[1])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert spy.layouts and all(g == o for g, o in spy.layouts)
