"""Rollouts that hide the emulator: envs in groups, one group's games running while the network acts for another.

A rollout alternates two kinds of work: the emulator steps the games, then the network picks the next actions.
Done in turn, each waits for the other. :class:`EnvGroups` holds the envs as several vector envs (``--env-groups``;
ale-py's native env steps its games in its own threads between ``send`` and ``recv``), and
:func:`interleaved_steps` orders the work so that while group ``g``'s games run, the network acts for the other
groups::

    act(0, A) send(A) | act(0, B) send(B) | recv(A) act(1, A) send(A) | recv(B) act(1, B) send(B) | ...

Every env still makes exactly ``num_steps`` steps per rollout, and each env's game is the one it would play in a
single vector env (env ``i`` is seeded ``seed + i`` either way; tested). What changes with the number of groups is
only how the network's batch is cut: the actions are sampled per group, so a seed gives another (but again the
same, run after run) course of actions than with one group.

Why fixed groups rather than ale-py's asynchronous mode (``AtariVectorEnv(batch_size < num_envs)``, as envpool):
there ``recv`` returns whichever envs finished first (``info["env_id"]`` says which), so which envs the network
acts for together, and the order in which actions are sampled, depend on thread timing: a seed would not give the
same run twice, and each env's count of steps per rollout would need bookkeeping. Fixed groups keep both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space

StepResult = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


class EnvGroups(VectorEnv):
    """Several vector envs of one game played as one vector env of all their envs, in order.

    ``columns[g]`` is the slice of the whole env's indices that group ``g`` holds. ``reset`` and ``step`` act
    on all envs (``step`` runs the groups' games at the same time); :func:`interleaved_steps` uses
    :meth:`send` and :meth:`recv` of one group at a time. Each group must have ``send``/``recv`` (ale-py's
    native vector env, behind :class:`lot_rl.envs.atari.AleEpisodeStatistics`).
    """

    def __init__(self, groups: list[VectorEnv]):
        self.groups = list(groups)
        starts = np.cumsum([0] + [g.num_envs for g in self.groups])
        self.columns = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        self.num_envs = int(starts[-1])
        first = self.groups[0]
        self.single_observation_space = first.single_observation_space
        self.single_action_space = first.single_action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = dict(first.metadata)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Reset every group; an integer ``seed`` seeds env ``i`` with ``seed + i``, as one vector env does.
        ``options["reset_mask"]`` (one flag per env) is split between the groups."""
        results = []
        for group, cols in zip(self.groups, self.columns):
            group_options = options
            if options and "reset_mask" in options:
                group_options = {**options, "reset_mask": np.asarray(options["reset_mask"])[cols]}
            results.append(group.reset(seed=None if seed is None else seed + cols.start, options=group_options))
        return np.concatenate([obs for obs, _ in results]), concat_infos([info for _, info in results], self.sizes)

    @property
    def sizes(self) -> list[int]:
        return [cols.stop - cols.start for cols in self.columns]

    def send(self, group: int, actions: np.ndarray) -> None:
        """Start group ``group``'s games on ``actions`` (one per env of the group)."""
        self.groups[group].send(actions)

    def recv(self, group: int) -> StepResult:
        """Wait for group ``group``'s step; its envs' results, indexed within the group."""
        return self.groups[group].recv()

    def step(self, actions: np.ndarray) -> StepResult:
        actions = np.asarray(actions)
        for g, cols in enumerate(self.columns):
            self.send(g, actions[cols])
        results = [self.recv(g) for g in range(len(self.groups))]
        return (*(np.concatenate([r[i] for r in results]) for i in range(4)),
                concat_infos([r[4] for r in results], self.sizes))

    def close(self, **kwargs: Any) -> None:
        for group in self.groups:
            group.close(**kwargs)


def concat_infos(infos: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """One vector info of several groups' infos: arrays joined in env order, nested dicts likewise; an entry
    that some groups lack (``_episode`` where no game ended) is filled with zeros (False) for their envs."""
    joined: dict[str, Any] = {}
    for key in dict.fromkeys(k for info in infos for k in info):
        values = [info.get(key) for info in infos]
        template = next(v for v in values if v is not None)
        if isinstance(template, dict):
            joined[key] = concat_infos([v if v is not None else {} for v in values], sizes)
        else:
            template = np.asarray(template)
            joined[key] = np.concatenate([np.asarray(v) if v is not None else np.zeros((n, *template.shape[1:]), template.dtype)
                                          for v, n in zip(values, sizes)])
    return joined


def interleaved_steps(envs: VectorEnv, num_steps: int,
                      act: Callable[[int, slice], np.ndarray]) -> Iterator[tuple[int, slice, StepResult]]:
    """Play ``num_steps`` steps of every env, the network acting for one group while the others' games run.

    ``act(step, columns)`` returns the actions of envs ``columns`` at ``step`` (it reads their current
    observations); the iterator yields ``(step, columns, results)`` for each group's step, in order of steps,
    and within a step of groups (so env 0's results of a step always come first). The results of a group's step
    are yielded before ``act`` is asked for that group's next step: record the new observations there. A plain
    vector env is one group, stepped in turn (the loop of CleanRL's rollout, action for action).
    """
    if isinstance(envs, EnvGroups):
        send, recv, columns = envs.send, envs.recv, envs.columns
    else:
        pending: list[np.ndarray] = []
        send, recv, columns = (lambda _, a: pending.append(a)), (lambda _: envs.step(pending.pop())), \
            [slice(0, envs.num_envs)]
    for step in range(num_steps + 1):
        for group, cols in enumerate(columns):
            if step > 0:
                yield step - 1, cols, recv(group)
            if step < num_steps:
                send(group, act(step, cols))
